"""One view of the CLIP towers MaskCLIP runs on: OpenAI CLIP's (``clip.model``) and OpenCLIP's
(``open_clip``) class-token ViTs and their text transformers.

The MaskCLIP Visual Encoder, the CLIP Baseline and the text encoder are written once; what
differs between the two families is read here:

* image tower: the input size (OpenAI: square ``input_resolution``; OpenCLIP: ``image_size``
  (H, W), any grid of square patches), the layer scales of OpenCLIP blocks (``ls_1``,
  ``ls_2``; identity for OpenAI), and whether the tower pools through its class token at all;
* text tower: OpenAI's transformer runs sequence-first and keeps its causal mask in its
  blocks, OpenCLIP's runs batch-first and takes the mask as an argument.

The patch embedding (``conv1``), class token, positional embedding, ``ln_pre``, the blocks'
``ln_1`` / ``attn`` (an ``nn.MultiheadAttention``) / ``ln_2`` / ``mlp``, ``ln_post`` and
``proj`` have the same names and meaning in both families, so they are used as they are.

Only towers whose image embedding is ``ln_post(class token) @ proj`` are accepted: a mask
class token copies the class token, so a tower that pools otherwise (attentional pooling,
global average pooling, timm towers such as EVA or PE, ResNets) has nothing MaskCLIP can copy,
and ``vit_layout`` refuses it, saying why.
"""
import dataclasses
from typing import Optional, Tuple

import clip.model
import torch
from torch import nn

__all__ = [
    "ViTLayout",
    "embed_image",
    "encode_image",
    "layer_scales",
    "text_transformer_forward",
    "vit_layout",
]


@dataclasses.dataclass(frozen=True)
class ViTLayout:
    """What the encoders need to know of a class-token ViT image tower."""

    image_size: Tuple[int, int]  # (H, W) input the tower was built for (its positional embedding)
    patch_size: int  # square patches of patch_size x patch_size pixels
    width: int  # token width D
    num_heads: int  # D / num_heads is the head width
    num_layers: int
    output_dim: int  # width of the joint image-text space (after ``proj``)

    @property
    def grid_size(self) -> Tuple[int, int]:
        """(rows, columns) of patches."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


def _is_open_clip_vit(visual: nn.Module) -> bool:
    """Whether ``visual`` is OpenCLIP's VisionTransformer (open_clip is only imported when the
    tower comes from it)."""
    if not type(visual).__module__.startswith("open_clip"):
        return False
    from open_clip.transformer import VisionTransformer

    return isinstance(visual, VisionTransformer)


def vit_layout(visual: nn.Module) -> ViTLayout:
    """The layout of a class-token ViT image tower of either family.

    Raises:
        ValueError: the tower is not one MaskCLIP can run on, with the reason.
    """
    if isinstance(visual, clip.model.VisionTransformer):
        image_size = (visual.input_resolution, visual.input_resolution)
    elif _is_open_clip_vit(visual):
        _check_open_clip_pooling(visual)
        image_size = tuple(visual.image_size)
    else:
        raise ValueError(
            f"MaskCLIP needs the image tower of a class-token ViT CLIP (clip.model."
            f"VisionTransformer or open_clip's VisionTransformer), got {type(visual).__name__}: "
            f"{_why_not(visual)}"
        )

    patch = tuple(visual.conv1.kernel_size)
    if patch[0] != patch[1] or tuple(visual.conv1.stride) != patch:
        raise ValueError(
            f"MaskCLIP needs square, non-overlapping patches (masks are patchified like the "
            f"image), got kernel {patch} and stride {tuple(visual.conv1.stride)}"
        )
    p = patch[0]
    if image_size[0] % p or image_size[1] % p:
        raise ValueError(f"the image size {image_size} is not a multiple of the patch size {p}")
    num_patches = (image_size[0] // p) * (image_size[1] // p)
    if visual.positional_embedding.shape[0] != 1 + num_patches:
        raise ValueError(
            f"the positional embedding has {visual.positional_embedding.shape[0]} rows, expected "
            f"1 class token + {num_patches} patches for image size {image_size} and patch size {p}"
        )

    blocks = list(visual.transformer.resblocks)
    for i, block in enumerate(blocks, start=1):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise ValueError(
                f"block {i} of the image tower has attention {type(attn).__name__}, not torch's "
                f"nn.MultiheadAttention with packed q/k/v weights: OpenCLIP's custom blocks "
                f"(qk_norm, scaled cosine attention, scale_heads, scale_attn, scale_fc) change "
                f"the attention MaskCLIP reproduces, so they are not supported"
            )
        if getattr(block, "attn_mask", None) is not None:
            raise ValueError(f"block {i} of the image tower masks its attention; CLIP's does not")
    return ViTLayout(
        image_size=image_size,
        patch_size=p,
        width=visual.conv1.out_channels,
        num_heads=blocks[0].attn.num_heads,
        num_layers=len(blocks),
        output_dim=visual.output_dim,
    )


def _check_open_clip_pooling(visual: nn.Module) -> None:
    if visual.attn_pool is not None:
        raise ValueError(
            "this OpenCLIP image tower pools with attention (vision_cfg 'attentional_pool', as "
            "in CoCa): its embedding comes from learned queries, not from a class token that "
            "mask class tokens could copy"
        )
    if visual.pool_type != "tok":
        raise ValueError(
            f"this OpenCLIP image tower pools with pool_type {visual.pool_type!r} (global "
            f"average pooling, 'global_average_pool' in older configs, or none): its embedding "
            f"is not its class token, which mask class tokens copy; only pool_type 'tok' works"
        )


def _why_not(visual: nn.Module) -> str:
    name = type(visual).__name__
    if name == "ModifiedResNet":
        return "ResNet CLIPs have no class token to copy"
    if name == "TimmModel":
        return (
            "timm image towers (EVA, PE, SigLIP's ViTs, ...) pool with their own heads (attention "
            "pooling, averages, ...) outside the CLIP class-token layout MaskCLIP copies"
        )
    return "mask class tokens need a ViT that pools through its class token"


def layer_scales(block: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """(ls_1, ls_2): the layer scales of an OpenCLIP block (identity modules when it has
    none), identity for an OpenAI block; the residual branches are x + ls(branch(x))."""
    return getattr(block, "ls_1", _IDENTITY), getattr(block, "ls_2", _IDENTITY)


_IDENTITY = nn.Identity()


def embed_image(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """CLIP's token embedding of images (B, 3, H, W): ``ln_pre([class; patches] + pos)``,
    (B, 1 + N, D) with patches in row-major order. (OpenCLIP's patch dropout is a no-op in
    eval mode, where the frozen tower always is, and is not applied.)"""
    x = visual.conv1(images.to(visual.conv1.weight.dtype))  # (B, D, rows, cols)
    x = x.flatten(2).transpose(1, 2)
    class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([class_token, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(x)


def encode_image(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, output_dim): the tower's own image embedding (its forward, pooled output only)."""
    out = visual(images)
    return out[0] if isinstance(out, tuple) else out  # OpenCLIP with output_tokens


def text_transformer_forward(
    transformer: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor]
) -> torch.Tensor:
    """Runs a CLIP text transformer over batch-first tokens (T, L, D) -> (T, L, D).

    OpenAI's runs sequence-first with its causal mask stored in its blocks (``attn_mask``
    unused); OpenCLIP's takes batch-first input and the mask as an argument.
    """
    if isinstance(transformer, clip.model.Transformer):
        return transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    return transformer(x, attn_mask=attn_mask)
