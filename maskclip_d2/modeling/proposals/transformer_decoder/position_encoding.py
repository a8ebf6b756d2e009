"""Sine positional encoding of a feature map (DETR's, normalised coordinates)."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed 2-D sine / cosine encoding of pixel positions.

    Each of y and x gets ``num_pos_feats`` channels: sin and cos, interleaved, of the position
    (pixel centres' cumulative index scaled to ``[0, scale]``) divided by
    ``temperature ** (2 * (i // 2) / num_pos_feats)``. The output has ``2 * num_pos_feats``
    channels, y first.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        scale: float = 2 * math.pi,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W), only its shape, device are used. Returns (B, 2 * num_pos_feats, H, W)."""
        batch, _, height, width = x.shape
        ones = torch.ones(height, width, device=x.device, dtype=torch.float32)
        y_embed = ones.cumsum(0)
        x_embed = ones.cumsum(1)
        y_embed = y_embed / (y_embed[-1:, :] + self.eps) * self.scale
        x_embed = x_embed / (x_embed[:, -1:] + self.eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)

        def encode(position):  # (H, W) -> (H, W, num_pos_feats), sin and cos interleaved
            angles = position[:, :, None] / dim_t
            return torch.stack((angles[:, :, 0::2].sin(), angles[:, :, 1::2].cos()), dim=3).flatten(2)

        pos = torch.cat((encode(y_embed), encode(x_embed)), dim=2).permute(2, 0, 1)
        return pos.unsqueeze(0).expand(batch, -1, -1, -1).to(x.dtype)
