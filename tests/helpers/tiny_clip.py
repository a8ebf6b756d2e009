"""Tiny random CLIPs of OpenAI's family built in-process, and the images, masks and RMA weights
the encoder tests feed them."""
import torch
import torch.nn.functional as F
from clip.model import CLIP

# (vision width, patch size, resolution, layers): heads = width / 64.
CLIP_SIZES = {
    "w64-p16-r64-l2": (64, 16, 64, 2),
    "w128-p8-r64-l3": (128, 8, 64, 3),
    "w128-p16-r96-l4": (128, 16, 96, 4),
}


def tiny_clip(width, patch, resolution, layers, seed=0):
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=32, image_resolution=resolution, vision_layers=layers, vision_width=width,
        vision_patch_size=patch, context_length=8, vocab_size=64, transformer_width=64,
        transformer_heads=1, transformer_layers=1,
    )
    return model.eval()


def random_masks(batch, size, patch, seed=0):
    """Mask logits covering the cases that matter: whole image, empty, one pixel, a blob smaller
    than a patch straddling patch borders, smooth random regions, a hard-edged rectangle.
    ``size`` is R (square) or (H, W)."""
    g = torch.Generator().manual_seed(seed)
    H, W = (size, size) if isinstance(size, int) else size
    smooth = F.interpolate(
        torch.randn(batch, 3, 4, 4, generator=g) * 4, size=(H, W), mode="bilinear"
    )
    full = torch.full((batch, 1, H, W), 6.0)
    empty = torch.full((batch, 1, H, W), -6.0)
    pixel = empty.clone()
    pixel[:, :, H // 3, W // 2] = 3.0
    blob = empty.clone()
    r, c = patch * (H // patch // 2), patch * (W // patch // 2)  # a patch corner: four patches
    blob[:, :, r - 2:r + 2, c - 1:c + 1] = 2.0
    rect = empty.clone()
    rect[:, :, patch // 2:H - patch, 1:W // 2] = 4.0
    return torch.cat([full, smooth[:, :1], empty, pixel, blob, smooth[:, 1:], rect], dim=1)


def randomise_rma_weights(encoder, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in encoder.rma_layers.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def input_size(model):
    """(H, W) of a CLIP of either family."""
    visual = model.visual
    if hasattr(visual, "input_resolution"):  # OpenAI
        return (visual.input_resolution,) * 2
    return tuple(visual.image_size)  # OpenCLIP


def images_for(model, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *input_size(model), generator=g)
