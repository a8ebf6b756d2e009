"""Mask2Former's pixel decoder: a deformable-attention encoder over the coarse backbone levels,
then an FPN-style top-down path to the stride of the mask features.

Data flow for the default R50 config (strides in brackets)::

    res3 (8), res4 (16), res5 (32) --1x1 conv + GN--> 6 deformable encoder layers
        --> encoded res5, res4, res3   (the multi-scale features of the transformer decoder)
    res2 (4) --lateral 1x1 conv--> + upsampled encoded res3 --3x3 conv--> 1x1 conv
        --> mask features (B, MASK_DIM, H/4, W/4)
"""
import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from .ms_deform_attn import MSDeformAttn

__all__ = [
    "MSDeformAttnTransformerEncoderLayer",
    "MSDeformAttnTransformerEncoder",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnPixelDecoder",
    "build_pixel_decoder",
]


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME`` (looked up in
    ``SEM_SEG_HEADS_REGISTRY``), built for backbone features of ``input_shape``."""
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(f"pixel decoder {name} has no forward_features(features) method")
    return model


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then an FFN."""

    def __init__(
        self,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        n_levels: int,
        n_heads: int,
        n_points: int,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)

    def forward(self, src, pos, reference_points, spatial_shapes):
        """src, pos: (B, S, d_model); reference_points: (B, S, n_levels, 2). Returns (B, S, d_model)."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.dropout2(F.relu(self.linear1(src)))
        return self.norm2(src + self.dropout3(self.linear2(hidden)))


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of deformable encoder layers; every pixel of every level is a query whose
    reference point is its own centre."""

    def __init__(self, layers: List[MSDeformAttnTransformerEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes, batch: int, device) -> torch.Tensor:
        """Pixel centres of every level, normalised to [0, 1]: (B, S, L, 2), (x, y).

        A pixel's reference point is the same normalised location on every level."""
        points = []
        for height, width in spatial_shapes:
            ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
        points = torch.cat(points, dim=0)
        return points[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)

    def forward(self, src, pos, spatial_shapes):
        """src, pos: (B, S, d_model), the levels flattened and concatenated. Returns (B, S, d_model)."""
        reference_points = self.reference_points(spatial_shapes, src.shape[0], src.device).to(src.dtype)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Deformable DETR's encoder over L feature maps: flattens them, adds a learned level
    embedding to the positional encodings, and runs the layer stack."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        num_encoder_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_feature_levels: int,
        enc_n_points: int,
    ):
        super().__init__()
        self.encoder = MSDeformAttnTransformerEncoder(
            [
                MSDeformAttnTransformerEncoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]):
        """
        Args:
            srcs, pos_embeds: L maps (B, d_model, H_l, W_l) each.

        Returns:
            (memory (B, S, d_model), spatial_shapes: L pairs (H_l, W_l)), S = sum(H_l * W_l).
        """
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], dim=1)
        pos_flat = torch.cat(
            [
                pos.flatten(2).transpose(1, 2) + self.level_embed[level][None, None, :]
                for level, pos in enumerate(pos_embeds)
            ],
            dim=1,
        )
        return self.encoder(src_flat, pos_flat, spatial_shapes), spatial_shapes


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Multi-scale deformable-attention pixel decoder (Mask2Former).

    ``forward_features(features)`` returns ``(mask_features, multi_scale_features)``:

    * ``mask_features``: (B, mask_dim, H / common_stride, W / common_stride), the per-pixel
      embeddings that the query embeddings are dotted with to give mask logits;
    * ``multi_scale_features``: the encoded transformer levels, coarsest first, each
      (B, conv_dim, H_l, W_l): what the masked-attention decoder cycles through.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
        bfloat16_autocast: bool = False,
    ):
        """
        Args:
            input_shape: channels and stride of each backbone feature the decoder reads.
            transformer_dropout, transformer_nheads, transformer_dim_feedforward,
            transformer_enc_layers, transformer_n_points: the deformable encoder's settings.
            conv_dim: channels of every level inside the decoder.
            mask_dim: channels of the mask features.
            norm: normalisation of the input projections and FPN convs ("GN", "BN", "" ...).
            transformer_in_features: the backbone features the encoder attends over.
            common_stride: stride of the mask features; finer backbone levels than the
                encoder's finest, down to this stride, enter through the FPN path.
            bfloat16_autocast: under bfloat16 autocast, run as the rest of the network does:
                the projections and feed-forward layers in bfloat16; the encoder's residual
                stream and layer norms, the attention weights' softmax and the bilinear sampling
                in float32 (on CPU, autocast runs the FPN's group norms in bfloat16). False
                (Mask2Former) and under any other autocast: float32 throughout.
        """
        super().__init__()
        self.bfloat16_autocast = bfloat16_autocast
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing:
            raise ValueError(
                f"encoder features {missing} are not among the pixel decoder's inputs "
                f"{sorted(input_shape)}; check SEM_SEG_HEAD.IN_FEATURES and the backbone's OUT_FEATURES"
            )
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        encoder_levels = [(name, shape) for name, shape in by_stride if name in transformer_in_features]
        # coarsest first: the order of the encoder inputs and of the decoder's levels
        self.transformer_in_features = [name for name, _ in encoder_levels][::-1]
        self.transformer_num_feature_levels = len(encoder_levels)
        use_bias = norm == ""

        self.input_proj = nn.ModuleList()
        for name in self.transformer_in_features:
            conv = nn.Conv2d(input_shape[name].channels, conv_dim, kernel_size=1, bias=True)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, get_norm(norm, conv_dim) or nn.Identity()))

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        # FPN levels: backbone levels finer than the encoder's, down to common_stride
        finest_encoder_stride = encoder_levels[0][1].stride
        self.common_stride = common_stride
        num_fpn_levels = int(round(math.log2(finest_encoder_stride / common_stride)))
        fpn_levels = [(name, shape) for name, shape in by_stride if shape.stride < finest_encoder_stride]
        if len(fpn_levels) < num_fpn_levels:
            raise ValueError(
                f"mask features at stride {common_stride} need {num_fpn_levels} backbone level(s) "
                f"finer than stride {finest_encoder_stride}; got {[n for n, _ in fpn_levels]}"
            )
        fpn_levels = fpn_levels[len(fpn_levels) - num_fpn_levels:]
        # coarsest first, the order of the top-down pass
        self.fpn_in_features = [name for name, _ in fpn_levels][::-1]
        self.lateral_convs = []
        self.output_convs = []
        for index, (name, shape) in enumerate(fpn_levels):
            lateral = Conv2d(
                shape.channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim)
            )
            output = Conv2d(
                conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                norm=get_norm(norm, conv_dim), activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            # Mask2Former's parameter names, finest level = 1
            self.add_module(f"adapter_{index + 1}", lateral)
            self.add_module(f"layer_{index + 1}", output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.lateral_convs = self.lateral_convs[::-1]
        self.output_convs = self.output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "bfloat16_autocast": head.PIXEL_DECODER_BFLOAT16,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Args:
            features: backbone outputs by name, (B, C_f, H / stride_f, W / stride_f).

        Returns:
            mask_features (B, mask_dim, H / common_stride, W / common_stride) and the encoded
            transformer levels, coarsest first, (B, conv_dim, H_l, W_l) each.
        """
        device_type = next(iter(features.values())).device.type
        # deformable attention samples with bilinear weights: kept in float32 under AMP
        # (float16), and under bfloat16 autocast unless ``bfloat16_autocast``
        follow = (self.bfloat16_autocast and torch.is_autocast_enabled(device_type)
                  and torch.get_autocast_dtype(device_type) == torch.bfloat16)
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=follow):
            srcs, pos = [], []
            for proj, name in zip(self.input_proj, self.transformer_in_features):
                x = features[name].float()
                # float32 levels: the encoder's residual stream, and so its layer norms, stay
                # float32 under bfloat16 autocast too (CPU autocast would run a norm of a
                # bfloat16 input in bfloat16); a no-op in float32
                srcs.append(proj(x).float())
                pos.append(self.pe_layer(x))
            memory, spatial_shapes = self.transformer(srcs, pos)

            batch = memory.shape[0]
            sizes = [h * w for h, w in spatial_shapes]
            multi_scale_features = [
                level.transpose(1, 2).reshape(batch, -1, h, w)
                for level, (h, w) in zip(memory.split(sizes, dim=1), spatial_shapes)
            ]

            finest = multi_scale_features[-1]
            for name, lateral, output in zip(self.fpn_in_features, self.lateral_convs, self.output_convs):
                lateral_features = lateral(features[name].float())
                finest = output(
                    lateral_features
                    + F.interpolate(finest, size=lateral_features.shape[-2:], mode="bilinear", align_corners=False)
                )
            return self.mask_features(finest), multi_scale_features

    def forward(self, features):
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
