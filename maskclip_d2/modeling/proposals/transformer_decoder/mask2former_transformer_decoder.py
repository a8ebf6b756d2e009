"""Mask2Former's masked-attention transformer decoder.

Learnable queries go through ``num_layers`` rounds of (masked cross-attention to one level of
the pixel decoder's multi-scale features, cycling coarse to fine; self-attention; FFN). Before
the first round and after every round, each query predicts class logits (``num_classes`` + 1
for no-object) and a mask (its embedding dotted with the per-pixel mask features). A query's
next cross-attention only sees the pixels its current mask covers (sigmoid >= threshold).
"""
from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from .attention import CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from .position_encoding import PositionEmbeddingSine

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder", "MultiScaleMaskedTransformerDecoder"]

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of mask-classification models, built by
``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`` with ``(cfg, in_channels, num_classes)``.
"""


def build_transformer_decoder(cfg, in_channels: int, num_classes: int) -> nn.Module:
    """The decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``, reading features
    of ``in_channels`` channels and classifying into ``num_classes`` classes + no-object."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, num_classes)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder with a mask-classification head.

    ``forward(multi_scale_features, mask_features)`` returns a dict:

    * ``"pred_logits"``: (B, Q, num_classes + 1), the last layer's class logits, no-object last;
    * ``"pred_masks"``: (B, Q, H_m, W_m), the last layer's mask logits at the mask features'
      resolution;
    * ``"aux_outputs"``: ``num_layers`` dicts with the same two keys, the earlier predictions
      (from the learnable queries, then after layers 1 .. num_layers - 1), for deep supervision.
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        num_feature_levels: int = 3,
        dropout: float = 0.0,
        mask_embed_layers: int = 3,
        attn_mask_threshold: float = 0.5,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features.
            num_classes: number of classes; the class head has one more output, no-object.
            hidden_dim: width of the queries.
            num_queries: number of queries (= predicted masks per image).
            nheads: attention heads.
            dim_feedforward: hidden width of the FFNs.
            dec_layers: number of transformer layers (rounds of cross / self-attention + FFN).
            pre_norm: LayerNorm before (True) or after (False) each sub-layer.
            mask_dim: channels of the mask features.
            enforce_input_project: project the features by a 1x1 conv even when
                ``in_channels == hidden_dim``.
            num_feature_levels: how many feature levels the layers cycle through.
            dropout: dropout inside the layers.
            mask_embed_layers: depth of the MLP giving each query's mask embedding.
            attn_mask_threshold: a query attends to the pixels where its mask's probability
                is at least this.
        """
        super().__init__()
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.attn_mask_threshold = attn_mask_threshold

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2)
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=dropout, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=dropout, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=dropout, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # the queries' content
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # the queries' positions
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
            else:
                proj = nn.Sequential()
            self.input_proj.append(proj)

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, mask_embed_layers)

    @classmethod
    def from_config(cls, cfg, in_channels: int, num_classes: int):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mf.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts predictions: the one from the bare queries + one per layer
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
            "num_feature_levels": len(cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
        }

    def forward(self, multi_scale_features: List[torch.Tensor], mask_features: torch.Tensor) -> Dict:
        """
        Args:
            multi_scale_features: ``num_feature_levels`` maps (B, in_channels, H_l, W_l),
                coarsest first.
            mask_features: (B, mask_dim, H_m, W_m).

        Returns:
            the dict described in the class docstring.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(
                f"expected {self.num_feature_levels} feature levels, got {len(multi_scale_features)}"
            )
        srcs, pos, sizes = [], [], []
        for level, x in enumerate(multi_scale_features):
            sizes.append(x.shape[-2:])
            pos.append(self.pe_layer(x).flatten(2).transpose(1, 2))  # (B, HW, C)
            src = self.input_proj[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]
            srcs.append(src.transpose(1, 2))  # (B, HW, C)

        batch = mask_features.shape[0]
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        output = self.query_feat.weight[None].expand(batch, -1, -1)

        predictions = []
        class_logits, mask_logits, attn_mask = self.forward_prediction_heads(output, mask_features, sizes[0])
        predictions.append({"pred_logits": class_logits, "pred_masks": mask_logits})
        for index in range(self.num_layers):
            level = index % self.num_feature_levels
            output = self.transformer_cross_attention_layers[index](
                output, srcs[level], attn_mask=attn_mask, pos=pos[level], query_pos=query_pos
            )
            output = self.transformer_self_attention_layers[index](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[index](output)
            next_size = sizes[(index + 1) % self.num_feature_levels]
            class_logits, mask_logits, attn_mask = self.forward_prediction_heads(output, mask_features, next_size)
            predictions.append({"pred_logits": class_logits, "pred_masks": mask_logits})

        out = dict(predictions[-1])
        out["aux_outputs"] = predictions[:-1]
        return out

    def forward_prediction_heads(self, output, mask_features, attn_mask_size):
        """Class logits (B, Q, K + 1), mask logits (B, Q, H_m, W_m) and the next layer's
        attention mask (B, 1, Q, h * w), bool, True = may attend, at ``attn_mask_size`` (h, w)."""
        decoded = self.decoder_norm(output)
        class_logits = self.class_embed(decoded)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)

        with torch.no_grad():
            small = F.interpolate(mask_logits, size=attn_mask_size, mode="bilinear", align_corners=False)
            attn_mask = small.sigmoid().flatten(2) >= self.attn_mask_threshold
            # a query whose mask is empty at this level attends everywhere instead
            empty = ~attn_mask.any(dim=-1, keepdim=True)
            attn_mask = (attn_mask | empty).unsqueeze(1)
        return class_logits, mask_logits, attn_mask
