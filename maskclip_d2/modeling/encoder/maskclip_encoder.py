"""The MaskCLIP Visual Encoder (paper section 3.2): Mask Class Tokens and Relative Mask Attention.

A frozen CLIP ViT reads the image as usual; M extra *mask class tokens* ride along and read
one mask region each, so that one forward pass yields one CLIP-space feature per mask.

Token layout inside the encoder: ``[class; N patches; M mask class tokens]``.

* Mask Class Tokens (Eq. 1-2): each mask token starts as a copy of CLIP's class token. The
  class and patch tokens attend to each other exactly as in CLIP and never to mask tokens;
  mask token i attends to the class token and to patch j iff mask i has a pixel in patch j
  (``sigmoid(logit) >= threshold``, then a max-pool by the patch size); mask tokens never
  attend to mask tokens. Since nothing attends to a mask token, mask tokens need queries
  only: no keys, no values.
* Relative Mask Attention (Eq. 3-4), in the RMA layers only: the mask-token-to-patch logits
  become ``(q_m . k_n + A'[m, n]) / (2 sqrt(d))`` with ``d`` the head width, where
  ``A'[m, n] = sum_c phi_Qm(T_MP[m, n])_c * phi_Km(T_IM[n])_c`` is summed over each head's own
  channel slice (the authors' split); the logit to the class token stays ``q_m . k_cls / sqrt(d)``.
* Mask refinement (Eq. 5), in the same layers: ``logit(M_r) = logit(M_c) +
  f_r(phi_Q(T_MC) (.) phi_K(T_IM) / sqrt(d))``; the refined masks set the attention pattern of
  every later layer and feed the next RMA layer (as in the authors' code).

Efficiency: the class and patch tokens go through ``scaled_dot_product_attention`` unchanged;
the mask tokens make one more call over the same keys and values with an ``(M, 1 + N)`` mask
broadcast over heads; no ``(M + 1 + N)^2`` mask is ever built. RMA's Eq. 3 is factored so
that no M x N x D tensor is needed (see ``RelativeMaskAttention``); the M x N x D product of
Eq. 5 exists for ``refine_chunk_size`` masks at a time.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from clip.model import QuickGELU
from torch import nn
from torch.utils.checkpoint import checkpoint

from detectron2.config import configurable

from ..clip.towers import embed_image, layer_scales, vit_layout

__all__ = [
    "FrozenCLIPImageEncoder",
    "MaskCLIPVisualEncoder",
    "RelativeMaskAttention",
    "default_rma_layers",
    "mask_visibility",
    "pixels_in_mask",
]


# clip.model.QuickGELU: x * sigmoid(1.702 * x).
_QUICK_GELU_SLOPE = 1.702


def default_rma_layers(num_layers: int) -> List[int]:
    """Every L/4-th layer, 1-based: [6, 12, 18, 24] for 24 layers, [3, 6, 9, 12] for 12."""
    return sorted({math.ceil(k * num_layers / 4) for k in range(1, 5)})


def pixels_in_mask(mask_logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``sigmoid(mask_logits) >= threshold`` as a bool tensor of the same shape.

    Decided in logit space, ``logit >= log(t / (1 - t))``, against the smallest value of the
    logits' dtype that is not below that bound: exact in float32, bfloat16 and float16, and
    no sigmoid is evaluated.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"the mask threshold must lie in (0, 1), got {threshold}")
    bound = math.log(threshold / (1.0 - threshold))
    limit = torch.tensor(bound, dtype=torch.float64).to(mask_logits.dtype)
    if limit.double() < bound:
        limit = torch.nextafter(limit, torch.tensor(math.inf, dtype=limit.dtype))
    return mask_logits >= limit.to(mask_logits.device)


def mask_visibility(mask_logits: torch.Tensor, patch_size: int, threshold: float = 0.5) -> torch.Tensor:
    """Which patches each mask class token may attend to (Eq. 2, negated: True = visible).

    A patch is visible to a mask iff at least one of its pixels has ``sigmoid(logit) >=
    threshold`` (see ``pixels_in_mask``), i.e. the max-pool of the thresholded mask by the
    patch size.

    Args:
        mask_logits: (B, M, H, W) mask logits, H and W multiples of ``patch_size``.
        patch_size: side of a patch in pixels.
        threshold: probability above which a pixel belongs to the mask, in (0, 1).

    Returns:
        (B, M, N) bool, N = (H / patch_size) * (W / patch_size) patches in row-major order.
    """
    B, M, H, W = mask_logits.shape
    p = patch_size
    inside = pixels_in_mask(mask_logits, threshold)
    return inside.reshape(B, M, H // p, p, W // p, p).any(dim=5).any(dim=3).flatten(2)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, heads, T, D / heads)."""
    B, T, D = x.shape
    return x.view(B, T, num_heads, D // num_heads).transpose(1, 2)


class RelativeMaskAttention(nn.Module):
    """The weights RMA adds to one CLIP layer, and the computation they take part in (Eq. 3-5).

    Modules (names after the paper; CLIP's own q/k/v weights are not here and stay frozen):
        mask_patch_embed: f2, ``Conv2d(1, width, p, stride=p)`` over ``tanh(mask logits)``,
            giving the mask patch tokens T_MP (M x N x width).
        mask_query_norm: phi_Qm, a LayerNorm over the mask patch tokens.
        mask_key_proj: phi_Km, ``Linear(width, width)`` over the image tokens T_IM (the
            layer's ln_1 output, as in the authors' code).
        refine_head: f_r, GELU then a 1x1 convolution from width to p*p channels (written as
            a Linear over channels-last tokens), whose p*p outputs per patch are unfolded into
            that patch's p x p pixels of the full-resolution mask residual. The GELU is CLIP's
            sigmoid approximation ``x * sigmoid(1.702 x)`` (``QuickGELU``), as in the authors'
            code (their ``gelu`` in ``maskclip/modeling/maskclip.py``), so that their released
            RMA weights give their outputs.

    ``mask_key_proj`` and the last layer of ``refine_head`` start at zero, so an untrained
    layer adds nothing to the logits (A' = 0) and returns the masks unchanged; the other
    modules keep PyTorch's default initialisation.

    Eq. 3 is computed without the M x N x width mask patch tokens. With P the p*p pixels of
    tanh(mask) in one patch, the patch embedding is z = W P + b (W: width x p*p), and
    phi_Qm(z) = (z - mean(z)) / std(z) * gamma + beta, where z - mean(z) = Wc P + bc (Wc, bc:
    W and b centred over the width channels) and var(z) = P'(Wc'Wc)P / width + 2 P'Wc'bc /
    width + |bc|^2 / width. Hence, per head h with channels c in h and mask keys K[n]:

        A'[m, n, h] = (P . U[n, h] + V[n, h]) / std(z) + Lambda[n, h],
        U[n, h] = sum_c gamma_c K[n, c] Wc[c],   V[n, h] = sum_c gamma_c K[n, c] bc[c],
        Lambda[n, h] = sum_c beta_c K[n, c],

    which costs M x N x p*p x (p*p + heads) multiply-adds instead of M x N x p*p x width, and
    keeps nothing width-wide per (mask, patch) pair. (The tests compare it with the literal
    conv -> LayerNorm -> product -> sum.) Eq. 5's GELU allows no such shortcut: its
    M x N x width product is materialised, ``chunk_size`` masks at a time.
    """

    def __init__(self, width: int, num_heads: int, patch_size: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width {width} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.mask_patch_embed = nn.Conv2d(1, width, patch_size, stride=patch_size)
        self.mask_query_norm = nn.LayerNorm(width)
        self.mask_key_proj = nn.Linear(width, width)
        self.refine_head = nn.Sequential(QuickGELU(), nn.Linear(width, patch_size * patch_size))
        nn.init.zeros_(self.mask_key_proj.weight)
        nn.init.zeros_(self.mask_key_proj.bias)
        nn.init.zeros_(self.refine_head[1].weight)
        nn.init.zeros_(self.refine_head[1].bias)

    def forward(
        self,
        mask_logits: torch.Tensor,
        image_tokens: torch.Tensor,
        mask_queries: torch.Tensor,
        image_keys: torch.Tensor,
        chunk_size: int,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            mask_logits: (B, M, H, W) the layer's input (coarse) mask logits.
            image_tokens: (B, N, D) T_IM, the patch tokens after the layer's ln_1.
            mask_queries: (B, M, D) phi_Q(T_MC), CLIP's queries of the mask class tokens.
            image_keys: (B, N, D) phi_K(T_IM), CLIP's keys of the patch tokens.
            chunk_size: at most this many (image, mask) pairs go through the M x N x D
                product of Eq. 5 at once; this bounds its extra memory (also for autograd:
                in training each chunk is recomputed in backward).

        Returns:
            relative_logits: (B, heads, M, N) A' of Eq. 3, per head (not yet divided by
                2 sqrt(d)), in the module's dtype.
            refined_logits: (B, M, H, W) logit(M_r) of Eq. 5, in the dtype of ``mask_logits``.
        """
        dtype = self.mask_key_proj.weight.dtype
        B, M = mask_logits.shape[:2]
        mask_keys = self.mask_key_proj(image_tokens.to(dtype))  # phi_Km(T_IM): (B, N, D)
        image_terms = self._image_terms(mask_keys)
        # Like the authors, the Eq. 5 product uses the queries as scaled for attention. f_r is
        # QuickGELU, then the 1x1 conv; QuickGELU(x) = x sigmoid(a x) = silu(a x) / a, so the
        # queries take the slope a and the conv weight 1 / a: one fused SiLU is then the only
        # pass over the M x N x D product besides writing it and the conv reading it.
        head_dim = mask_queries.shape[-1] // self.num_heads
        mask_queries = mask_queries.to(dtype) * (_QUICK_GELU_SLOPE / math.sqrt(head_dim))
        image_keys = image_keys.to(dtype)
        conv = self.refine_head[1]
        refine_terms = (conv.weight / _QUICK_GELU_SLOPE, conv.bias)

        relative_logits = mask_keys.new_empty(B, self.num_heads, M, mask_keys.shape[1])
        refined_logits = mask_logits.new_empty(mask_logits.shape)
        p = self.patch_size
        rows, cols = mask_logits.shape[-2] // p, mask_logits.shape[-1] // p
        pixels = refined_logits.view(B, M, rows, p, cols, p)  # patch row, pixel row, patch col, ...
        step = max(1, chunk_size // max(B, 1))
        recompute = torch.is_grad_enabled() and self.training
        for start in range(0, M, step):
            chunk = slice(start, start + step)
            args = (mask_logits[:, chunk], mask_queries[:, chunk], image_keys, *image_terms,
                    *refine_terms)
            if recompute:
                relative, residual = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                relative, residual = self._chunk(*args)
            relative_logits[:, :, chunk] = relative
            # Eq. 5 in logit space; the residual's p*p values per patch go to its pixels.
            coarse = mask_logits[:, chunk].reshape(B, -1, rows, p, cols, p)
            pixels[:, chunk] = coarse + residual.permute(0, 1, 2, 4, 3, 5)
        return relative_logits, refined_logits

    def _image_terms(self, mask_keys: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The mask-independent factors of Eq. 3 (see the class docstring)."""
        B, N, D = mask_keys.shape
        H = self.num_heads
        weight = self.mask_patch_embed.weight.flatten(1)  # W: (D, p*p)
        weight = weight - weight.mean(0)  # Wc
        bias = self.mask_patch_embed.bias - self.mask_patch_embed.bias.mean()  # bc
        gram = weight.T @ weight / D  # (p*p, p*p)
        cross = 2 * (bias @ weight) / D  # (p*p,)
        offset = bias.square().sum() / D
        norm = self.mask_query_norm
        scaled_keys = (mask_keys * norm.weight).view(B, N, H, D // H)  # gamma * K
        U = torch.einsum("bnhc,hcq->bnhq", scaled_keys, weight.view(H, D // H, -1))
        V = (scaled_keys * bias.view(H, D // H)).sum(-1)  # (B, N, H)
        Lambda = (mask_keys.view(B, N, H, D // H) * norm.bias.view(H, D // H)).sum(-1)
        return gram, cross, offset, U, V, Lambda

    def _chunk(self, mask_logits, mask_queries, image_keys, gram, cross, offset, U, V, Lambda,
               refine_weight, refine_bias):
        """Eq. 3 and Eq. 5's residual for a chunk of m masks: A' (B, heads, m, N) and the
        residual logits (B, m, rows, cols, p, p), p*p pixels for each of the rows x cols patches."""
        B, m, height, width = mask_logits.shape
        p = self.patch_size
        rows, cols = height // p, width // p
        dtype = U.dtype

        # Eq. 3: P are the p*p pixels of tanh(mask) per patch, patches ordered like CLIP's.
        P = torch.tanh(mask_logits.to(dtype)).reshape(B, m, rows, p, cols, p)
        P = P.permute(0, 1, 2, 4, 3, 5).reshape(B, m, rows * cols, p * p)
        variance = (F.linear(P, gram, cross) * P).sum(-1) + offset  # var(z), gram symmetric
        inv_std = torch.rsqrt(variance.clamp_min(0) + self.mask_query_norm.eps)
        relative = torch.einsum("bmnq,bnhq->bmnh", P, U) + V.unsqueeze(1)
        relative = relative * inv_std.unsqueeze(-1) + Lambda.unsqueeze(1)
        relative = relative.permute(0, 3, 1, 2)  # (B, heads, m, N)

        # Eq. 5: f_r over the per-(mask, patch) product (see forward for the SiLU).
        product = mask_queries.unsqueeze(2) * image_keys.unsqueeze(1)  # (B, m, N, D)
        residual = F.linear(F.silu(product), refine_weight, refine_bias)
        return relative, residual.view(B, m, rows, cols, p, p)  # (B, m, patch row, patch col, p, p)


class FrozenCLIPImageEncoder(nn.Module):
    """What the MaskCLIP Visual Encoder and the CLIP Baseline share: a CLIP image tower used in
    place, frozen (``requires_grad=False``) and kept in eval mode by ``train()``, masks given
    as logits at the CLIP input size (H, W), and the input checks of their common
    ``forward(images (B, 3, H, W), mask_logits (B, M, H, W))`` contract.

    The tower is a class-token ViT of OpenAI's CLIP or of OpenCLIP (see ``clip.towers``);
    ``input_size`` is the (H, W) it was built for (R x R for OpenAI's models), and
    ``input_resolution`` is R for square inputs, None otherwise.
    """

    def __init__(self, visual: nn.Module, mask_threshold: float):
        super().__init__()
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must lie in (0, 1), got {mask_threshold}")
        self.layout = vit_layout(visual)
        self.visual = visual
        self.visual.requires_grad_(False)
        self.visual.eval()
        self.mask_threshold = mask_threshold
        self.input_size = self.layout.image_size
        height, width = self.input_size
        self.input_resolution = height if height == width else None

    def train(self, mode: bool = True):
        super().train(mode)
        self.visual.eval()  # CLIP stays frozen in inference mode
        return self

    def _check_inputs(self, images: torch.Tensor, mask_logits: torch.Tensor) -> None:
        H, W = self.input_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, H, W):
            raise ValueError(
                f"images must be (B, 3, {H}, {W}) at the CLIP input resolution, got "
                f"{tuple(images.shape)}; resize them first"
            )
        if (
            mask_logits.dim() != 4
            or mask_logits.shape[0] != images.shape[0]
            or tuple(mask_logits.shape[2:]) != (H, W)
        ):
            raise ValueError(
                f"mask_logits must be (B={images.shape[0]}, M, {H}, {W}), got "
                f"{tuple(mask_logits.shape)}; resize proposals to the CLIP input resolution "
                f"first (e.g. F.interpolate(..., mode='bilinear'))"
            )
        if not mask_logits.is_floating_point():
            raise ValueError(f"mask_logits must be floating point logits, got {mask_logits.dtype}")


class MaskCLIPVisualEncoder(FrozenCLIPImageEncoder):
    """A frozen CLIP ViT with Mask Class Tokens and, in ``"rma"`` mode, Relative Mask Attention.

    CLIP's weights are used in place (never copied), frozen (``requires_grad=False``) and kept
    in eval mode by ``train()``; only the :class:`RelativeMaskAttention` weights in
    ``rma_layers`` train.
    """

    @configurable
    def __init__(
        self,
        visual: nn.Module,
        *,
        mode: str = "rma",
        rma_layers: Optional[Sequence[int]] = None,
        mask_threshold: float = 0.5,
        refine_chunk_size: int = 4,
        train_refine_chunk_size: Optional[int] = None,
    ):
        """
        Args:
            visual: a CLIP ViT image tower, ``clip_model.visual``: OpenAI's
                ``clip.model.VisionTransformer`` or OpenCLIP's class-token
                ``VisionTransformer`` (see ``clip.towers.vit_layout`` for what is refused).
            mode: "rma" (MaskCLIP) or "mask_tokens" (MaskCLIP w/o RMA, training-free).
            rma_layers: 1-based indices of the layers that get RMA; None = every L/4-th
                layer (6, 12, 18, 24 of 24). Only for mode "rma".
            mask_threshold: a pixel belongs to a mask when sigmoid(logit) >= this.
            refine_chunk_size: (image, mask) pairs per chunk of Eq. 5's M x N x D product,
                which bounds its memory. On CPU, small chunks that stay in cache are fastest
                (4 beats 16 by about 10% at ViT-L/14@336px, see benchmarks/benchmark_encoder.py).
            train_refine_chunk_size: the same in training (with gradients), where each chunk is
                recomputed in backward and larger chunks save per-chunk work (32 against 4: 0.73x
                against 0.94x the dense reference's iteration time, ViT-B/16 batch 2 on CPU, the
                same peak memory; see benchmarks/benchmark_model.py); None: ``refine_chunk_size``.
        """
        if mode not in ("rma", "mask_tokens"):
            raise ValueError(
                f"mode must be 'rma' or 'mask_tokens', got {mode!r} (the CLIP Baseline is "
                f"CLIPBaselineEncoder)"
            )
        if refine_chunk_size < 1:
            raise ValueError(f"refine_chunk_size must be >= 1, got {refine_chunk_size}")
        if train_refine_chunk_size is not None and train_refine_chunk_size < 1:
            raise ValueError(f"train_refine_chunk_size must be >= 1, got {train_refine_chunk_size}")
        super().__init__(visual, mask_threshold)
        self.mode = mode
        self.refine_chunk_size = refine_chunk_size
        self.train_refine_chunk_size = train_refine_chunk_size or refine_chunk_size
        self.patch_size = self.layout.patch_size
        self.width = self.layout.width
        self.num_heads = self.layout.num_heads
        num_layers = self.layout.num_layers

        if mode == "mask_tokens":
            if rma_layers:
                raise ValueError(f"rma_layers={list(rma_layers)} given in mode 'mask_tokens'")
            rma_layers = []
        elif not rma_layers:
            rma_layers = default_rma_layers(num_layers)
        rma_layers = list(rma_layers)
        if len(set(rma_layers)) != len(rma_layers) or not all(
            isinstance(i, int) and 1 <= i <= num_layers for i in rma_layers
        ):
            raise ValueError(
                f"rma_layers must be distinct layer numbers in 1..{num_layers} (1-based), "
                f"got {rma_layers}"
            )
        # Keyed by the 1-based layer number, e.g. rma_layers["24"].
        self.rma_layers = nn.ModuleDict(
            {
                str(i): RelativeMaskAttention(self.width, self.num_heads, self.patch_size)
                for i in sorted(rma_layers)
            }
        )

    @classmethod
    def from_config(cls, cfg, visual):
        mode = cfg.MODEL.MASKCLIP.MODE
        return {
            "visual": visual,
            "mode": mode,
            "rma_layers": list(cfg.MODEL.MASKCLIP.RMA_LAYERS) if mode == "rma" else None,
            "mask_threshold": cfg.MODEL.MASKCLIP.MASK_THRESHOLD,
            "refine_chunk_size": cfg.MODEL.MASKCLIP.REFINE_CHUNK_SIZE,
            "train_refine_chunk_size": cfg.MODEL.MASKCLIP.TRAIN_REFINE_CHUNK_SIZE,
        }

    def forward(self, images: torch.Tensor, mask_logits: torch.Tensor) -> Dict[str, object]:
        """
        Args:
            images: (B, 3, H, W) CLIP-normalised images at CLIP's input size (H, W) (R x R
                for OpenAI's models).
            mask_logits: (B, M, H, W) mask logits (M >= 0), e.g. mask proposals resized to it.

        Returns:
            dict with
              "features": (B, M, E) one feature per mask in CLIP's joint space (after
                  ``ln_post`` and ``proj``, not normalised);
              "masks": list of (B, M, H, W) refined mask logits, one per RMA layer in order
                  (deep supervision; the last is the output). Empty in "mask_tokens" mode.
        """
        self._check_inputs(images, mask_logits)
        visual = self.visual
        B, M = mask_logits.shape[:2]

        # CLIP's embedding, then M copies of the class token (after ln_pre, like all tokens).
        x = embed_image(visual, images)  # (B, 1 + N, D)
        x = torch.cat([x, x[:, :1].expand(B, M, -1)], dim=1)  # (B, 1 + N + M, D)

        mask_attention = self._mask_attention(mask_logits)
        refined_masks = []
        for i, block in enumerate(visual.transformer.resblocks, start=1):
            rma = self.rma_layers[str(i)] if str(i) in self.rma_layers else None
            x, refined = self._block(block, x, mask_attention, mask_logits, rma)
            if rma is not None:
                mask_logits = refined
                refined_masks.append(mask_logits)
                mask_attention = self._mask_attention(mask_logits)

        features = visual.ln_post(x[:, x.shape[1] - M:])
        if visual.proj is not None:
            features = features @ visual.proj
        return {"features": features, "masks": refined_masks}

    def _mask_attention(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """What the mask class tokens attend to (Eq. 1-2): (B, 1, M, 1 + N) bool, True = may
        attend; the class token always, patch j iff the mask has a pixel in it. Broadcast
        over heads by scaled_dot_product_attention."""
        visible = mask_visibility(mask_logits, self.patch_size, self.mask_threshold)
        return F.pad(visible, (1, 0), value=True).unsqueeze(1)

    def _block(
        self,
        block: nn.Module,
        x: torch.Tensor,
        mask_attention: torch.Tensor,
        mask_logits: torch.Tensor,
        rma: Optional[RelativeMaskAttention],
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """One CLIP ResidualAttentionBlock over [class; patches; mask tokens], CLIP's weights
        (OpenCLIP's layer scales included).

        Returns the new tokens and, in an RMA layer, the refined mask logits (else None).
        """
        B, M = mask_logits.shape[:2]
        L = x.shape[1] - M  # class + patch tokens
        D, H = self.width, self.num_heads
        attn = block.attn
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        bias_q, bias_kv = (None, None) if bias is None else (bias[:D], bias[D:])

        h = block.ln_1(x)
        # Every token has a query; only class and patch tokens have keys and values, since
        # no token attends to a mask token.
        q = F.linear(h, weight[:D], bias_q)  # (B, L + M, D)
        k, v = F.linear(h[:, :L], weight[D:], bias_kv).chunk(2, dim=-1)  # (B, L, D) each
        q_heads, k_heads, v_heads = (_split_heads(t, H) for t in (q, k, v))

        # Class and patch tokens: CLIP's attention, unchanged.
        image_out = F.scaled_dot_product_attention(q_heads[:, :, :L], k_heads, v_heads)

        # Mask class tokens: the class token plus the visible patches (Eq. 1-2).
        refined = None
        if rma is None:
            mask_out = F.scaled_dot_product_attention(
                q_heads[:, :, L:], k_heads, v_heads, attn_mask=mask_attention
            )
        else:
            training = self.training and torch.is_grad_enabled()
            chunk_size = self.train_refine_chunk_size if training else self.refine_chunk_size
            relative, refined = rma(mask_logits, h[:, 1:L], q[:, L:], k[:, 1:], chunk_size)
            # Eq. 4 through SDPA's 1/sqrt(d) scale: halved patch keys give q.k / (2 sqrt(d)),
            # the float mask adds A' / (2 sqrt(d)) to visible patches and -inf elsewhere; the
            # class key is not halved, so the class logit stays q.k_cls / sqrt(d).
            head_dim = D // H
            keys = torch.cat([k_heads[:, :, :1], k_heads[:, :, 1:] * 0.5], dim=2)
            relative = F.pad(relative * (0.5 / math.sqrt(head_dim)), (1, 0))  # class: + 0
            attn_mask = relative.to(q.dtype).masked_fill(~mask_attention, float("-inf"))
            mask_out = F.scaled_dot_product_attention(
                q_heads[:, :, L:], keys, v_heads, attn_mask=attn_mask
            )

        out = torch.cat([image_out, mask_out], dim=2).transpose(1, 2).reshape(B, L + M, D)
        scale_attn, scale_mlp = layer_scales(block)
        x = x + scale_attn(attn.out_proj(out))
        x = x + scale_mlp(block.mlp(block.ln_2(x)))
        return x, refined
