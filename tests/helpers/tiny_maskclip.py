"""The tiny MaskCLIP of ``configs/tiny/maskclip_tiny.yaml`` (random weights), built in-process."""
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from maskclip_d2 import add_maskclip_config

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "maskclip_tiny.yaml"
VOCABULARY = ["person", "cat", "sky", "grass, lawn"]


def tiny_cfg(*opts):
    cfg = add_maskclip_config(get_cfg())
    cfg.merge_from_file(str(TINY))
    cfg.MODEL.MASKCLIP.VOCABULARY = VOCABULARY
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_model(*opts):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts))
    model.eval()
    return model
