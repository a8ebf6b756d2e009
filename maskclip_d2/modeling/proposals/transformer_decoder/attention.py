"""The three sub-layers of Mask2Former's decoder: cross-attention, self-attention, FFN.

Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with a boolean
mask (True = may attend). Parameter names follow ``torch.nn.MultiheadAttention``
(``in_proj_weight``, ``in_proj_bias``, ``out_proj``) and Mask2Former's layers, so Mask2Former
checkpoints load into these modules. All tensors are batch first: (B, N, C).
"""
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MultiHeadAttention", "CrossAttentionLayer", "SelfAttentionLayer", "FFNLayer"]


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query, key and value inputs, through SDPA."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        # rows: query, key, value projections
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Project x (B, N, C) with the index-th projection, split to (B, heads, N, C / heads)."""
        c = self.embed_dim
        x = F.linear(x, self.in_proj_weight[index * c:(index + 1) * c], self.in_proj_bias[index * c:(index + 1) * c])
        return x.unflatten(-1, (self.num_heads, c // self.num_heads)).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """
        Args:
            query: (B, Nq, C); key, value: (B, Nk, C).
            attn_mask: optional bool, True = may attend, broadcastable to (B, heads, Nq, Nk).

        Returns:
            (B, Nq, C).
        """
        out = F.scaled_dot_product_attention(
            self._heads(query, 0),
            self._heads(key, 1),
            self._heads(value, 2),
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(out.transpose(1, 2).flatten(2))


class CrossAttentionLayer(nn.Module):
    """Queries attend to image features; residual + LayerNorm (post-norm unless normalize_before)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.multihead_attn = MultiHeadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, memory, attn_mask=None, pos=None, query_pos=None):
        """tgt, query_pos: (B, Q, C); memory, pos: (B, HW, C); attn_mask: (B, 1, Q, HW) bool,
        True = may attend. Returns (B, Q, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        attended = self.multihead_attn(
            x + query_pos if query_pos is not None else x,
            memory + pos if pos is not None else memory,
            memory,
            attn_mask=attn_mask,
        )
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class SelfAttentionLayer(nn.Module):
    """Queries attend to each other; residual + LayerNorm."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def forward(self, tgt, query_pos=None):
        """tgt, query_pos: (B, Q, C). Returns (B, Q, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = x + query_pos if query_pos is not None else x
        tgt = tgt + self.dropout(self.self_attn(q, k, x))
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU MLP; residual + LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float = 0.0, normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, tgt):
        """tgt: (B, Q, C). Returns (B, Q, C)."""
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)
