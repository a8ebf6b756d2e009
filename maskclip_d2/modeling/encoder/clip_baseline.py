"""The paper's CLIP Baseline (appendix A, Algorithm 1): every masked image through CLIP.

Each mask, binarised (``sigmoid(logit) >= threshold``), multiplies the image; the masked
images go through CLIP's image tower, a chunk of them per forward pass. It costs M CLIP
forwards for M masks (the MaskCLIP Visual Encoder costs about one) and sees no context
outside the mask. Same ``forward`` contract as ``MaskCLIPVisualEncoder``.
"""
from typing import Dict, Sequence

import torch
from torch import nn

from detectron2.config import configurable

from ..clip.normalization import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from ..clip.towers import encode_image
from .maskclip_encoder import FrozenCLIPImageEncoder, pixels_in_mask

__all__ = ["CLIPBaselineEncoder"]


class CLIPBaselineEncoder(FrozenCLIPImageEncoder):
    """CLIP features of masked images, one CLIP forward per (image, mask) pair.

    Pixels outside a mask become black, as in the paper's ``mask * image`` on RGB values: in
    the CLIP-normalised input that is ``-mean / std`` per channel. CLIP is frozen and kept in
    eval mode; the module has no trainable weights.
    """

    @configurable
    def __init__(
        self,
        visual: nn.Module,
        *,
        mask_threshold: float = 0.5,
        chunk_size: int = 32,
        pixel_mean: Sequence[float] = CLIP_PIXEL_MEAN,
        pixel_std: Sequence[float] = CLIP_PIXEL_STD,
    ):
        """
        Args:
            visual: a CLIP ViT image tower, ``clip_model.visual`` (OpenAI's or OpenCLIP's).
            mask_threshold: a pixel is kept when sigmoid(logit) >= this.
            chunk_size: masked images per CLIP forward pass.
            pixel_mean, pixel_std: the normalisation the images arrive with (RGB in [0, 1]);
                they define black.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        super().__init__(visual, mask_threshold)
        self.chunk_size = chunk_size
        black = -torch.tensor(pixel_mean) / torch.tensor(pixel_std)
        self.register_buffer("background", black.view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg, visual):
        return {
            "visual": visual,
            "mask_threshold": cfg.MODEL.MASKCLIP.MASK_THRESHOLD,
            "chunk_size": cfg.MODEL.MASKCLIP.BASELINE_CHUNK_SIZE,
            "pixel_mean": [v / 255.0 for v in cfg.MODEL.CLIP.PIXEL_MEAN],
            "pixel_std": [v / 255.0 for v in cfg.MODEL.CLIP.PIXEL_STD],
        }

    def forward(self, images: torch.Tensor, mask_logits: torch.Tensor) -> Dict[str, object]:
        """
        Args:
            images: (B, 3, H, W) CLIP-normalised images at CLIP's input size.
            mask_logits: (B, M, H, W) mask logits, M >= 0.

        Returns:
            dict with "features": (B, M, E), CLIP's image embedding of each masked image
            (not normalised), and "masks": [] (the baseline does not refine masks).
        """
        self._check_inputs(images, mask_logits)
        B, M = mask_logits.shape[:2]
        dtype = self.visual.conv1.weight.dtype
        keep = pixels_in_mask(mask_logits, self.mask_threshold).flatten(0, 1).unsqueeze(1)
        image_of_pair = torch.arange(B, device=images.device).repeat_interleave(M)
        background = self.background.to(images.dtype)

        features = []
        for start in range(0, B * M, self.chunk_size):
            pairs = slice(start, start + self.chunk_size)
            masked = torch.where(keep[pairs], images[image_of_pair[pairs]], background)
            features.append(encode_image(self.visual, masked.to(dtype)))
        if not features:
            output_dim = self.layout.output_dim
            return {"features": images.new_zeros(B, 0, output_dim, dtype=dtype), "masks": []}
        return {"features": torch.cat(features).view(B, M, -1), "masks": []}
