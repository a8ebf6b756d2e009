"""The tiny MaskCLIP of ``configs/tiny/maskclip_tiny.yaml`` (random weights), built in-process."""
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances

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


def image_input(height, width, masks=None, classes=None, out_size=None):
    g = torch.Generator().manual_seed(height * 1000 + width)
    x = {"image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)}
    if out_size is not None:
        x["height"], x["width"] = out_size
    if masks is not None:
        inst = Instances((height, width))
        inst.gt_masks = BitMasks(masks)
        inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        x["instances"] = inst
    return x
