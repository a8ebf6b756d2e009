"""Mask2Former's head: pixel decoder + masked-attention transformer decoder."""
from typing import Dict

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn

from .pixel_decoder.msdeformattn import build_pixel_decoder
from .transformer_decoder.mask2former_transformer_decoder import build_transformer_decoder

__all__ = ["MaskFormerHead"]


class MaskFormerHead(nn.Module):
    """Backbone features -> per-query class logits and mask logits.

    ``forward(features)`` returns the transformer decoder's dict (``pred_logits``
    (B, Q, num_classes + 1), ``pred_masks`` (B, Q, H / common_stride, W / common_stride),
    ``aux_outputs``). Attribute names match Mask2Former's ``MaskFormerHead``
    (``pixel_decoder``, ``predictor``) so its checkpoints map onto this module.
    """

    # Mask2Former's MaskFormerHead is at state-dict version 2: it renames the keys of older
    # versions (moving everything outside ``predictor`` under ``pixel_decoder``), so a state
    # dict saved at the default version 1 would lose its pixel decoder there.
    _version = 2

    @configurable
    def __init__(self, *, pixel_decoder: nn.Module, predictor: nn.Module):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.num_classes = predictor.num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec], num_classes: int):
        return {
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            # the decoder reads the pixel decoder's levels, which have CONVS_DIM channels
            "predictor": build_transformer_decoder(cfg, cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM, num_classes),
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> Dict:
        mask_features, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features)
