"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021) in plain PyTorch.

Every query looks at ``n_points`` sampled locations per head and feature level, placed at
learned offsets around its reference point, and averages the bilinearly interpolated values
with learned weights. The sampling is ``torch.nn.functional.grid_sample``, so the same code
runs (and back-propagates) on the CPU and on CUDA; no compiled kernel is needed.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["multi_scale_deformable_attention", "MSDeformAttn"]


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: Sequence[Tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Weighted sum of bilinear samples taken from several feature maps.

    Args:
        value: (B, S, n_heads, head_dim), the L maps' pixels flattened row-major and
            concatenated in ``spatial_shapes`` order, S = sum(H_l * W_l).
        spatial_shapes: L pairs (H_l, W_l) of ints.
        sampling_locations: (B, Q, n_heads, L, n_points, 2), (x, y) normalised per level:
            (0, 0) is the top-left corner of the map, (1, 1) the bottom-right one, so the centre
            of pixel (row i, column j) is ((j + 0.5) / W_l, (i + 0.5) / H_l). Samples outside the
            map read zeros.
        attention_weights: (B, Q, n_heads, L, n_points).

    Returns:
        (B, Q, n_heads * head_dim): for every query and head, sum over levels and points of
        weight * value interpolated at the location; heads concatenated.
    """
    batch, _, n_heads, head_dim = value.shape
    _, num_queries, _, num_levels, n_points, _ = sampling_locations.shape
    if len(spatial_shapes) != num_levels:
        raise ValueError(f"{len(spatial_shapes)} spatial shapes for {num_levels} sampling levels")

    values_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample wants [-1, 1] coordinates; with align_corners=False these are pixel edges.
    grids = 2 * sampling_locations - 1
    output = value.new_zeros(batch * n_heads, head_dim, num_queries)
    for level, (height, width) in enumerate(spatial_shapes):
        # (B, H*W, n_heads, head_dim) -> (B * n_heads, head_dim, H, W)
        level_value = values_per_level[level].permute(0, 2, 3, 1).reshape(
            batch * n_heads, head_dim, height, width
        )
        # (B, Q, n_heads, n_points, 2) -> (B * n_heads, Q, n_points, 2)
        level_grid = grids[:, :, :, level].transpose(1, 2).reshape(
            batch * n_heads, num_queries, n_points, 2
        )
        # (B * n_heads, head_dim, Q, n_points)
        samples = F.grid_sample(
            level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        # (B, Q, n_heads, n_points) -> (B * n_heads, 1, Q, n_points)
        level_weights = attention_weights[:, :, :, level].transpose(1, 2).reshape(
            batch * n_heads, 1, num_queries, n_points
        )
        output = output + (samples * level_weights).sum(-1)
    # (B * n_heads, head_dim, Q) -> (B, Q, n_heads * head_dim)
    return output.view(batch, n_heads * head_dim, num_queries).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with its projections (Deformable DETR's module).

    Offsets and attention weights are linear functions of the query; offsets are in pixels of
    each level (divided by the level's size before they are added to the normalised reference
    point); the weights are a softmax over the ``n_levels * n_points`` samples of a head.
    """

    def __init__(self, d_model: int, n_levels: int, n_heads: int, n_points: int):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's start: head h samples along the direction at angle 2*pi*h/n_heads,
        point p at distance p + 1 (in the chessboard norm); uniform attention weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        # (n_heads, n_levels, n_points, 2)
        offsets = directions[:, None, None, :] * distances[None, None, :, None]
        offsets = offsets.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(offsets.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: Sequence[Tuple[int, int]],
        padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Q, d_model).
            reference_points: (B, Q, n_levels, 2), normalised (x, y) as in
                :func:`multi_scale_deformable_attention`.
            input_flatten: (B, S, d_model), the levels' pixels flattened and concatenated.
            spatial_shapes: n_levels pairs (H_l, W_l).
            padding_mask: optional (B, S) bool, True where ``input_flatten`` is padding.

        Returns:
            (B, Q, d_model).
        """
        batch, num_queries, _ = query.shape
        num_values = input_flatten.shape[1]
        if sum(h * w for h, w in spatial_shapes) != num_values:
            raise ValueError(f"spatial shapes {list(spatial_shapes)} do not add up to {num_values} values")

        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(batch, num_values, self.n_heads, self.d_model // self.n_heads)

        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        weights = self.attention_weights(query).view(
            batch, num_queries, self.n_heads, self.n_levels * self.n_points
        )
        # float32 softmax (a no-op in float32; under bfloat16 autocast the projection is bfloat16)
        weights = weights.float().softmax(-1).view(batch, num_queries, self.n_heads, self.n_levels, self.n_points)

        # offsets are in pixels of each level: divide by (W_l, H_l)
        level_sizes = torch.tensor(
            [(w, h) for h, w in spatial_shapes], dtype=query.dtype, device=query.device
        )
        locations = (
            reference_points[:, :, None, :, None, :]
            + offsets / level_sizes[None, None, None, :, None, :]
        )
        output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
