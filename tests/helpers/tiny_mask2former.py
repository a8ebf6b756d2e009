"""Tiny configs, a tiny backbone and generated images for the stage-1 (Mask2Former) tests."""
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.structures import Instances
from torch import nn

from maskclip_d2.config import add_mask2former_config

TINY_CHANNELS = {"res2": 16, "res3": 32, "res4": 32, "res5": 32}
TINY_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class TinyConvBackbone(Backbone):
    """res2..res5 at strides 4..32 from a few 3x3 convs (GroupNorm, so eval == train)."""

    def __init__(self, stem_channels: int = 8, groups: int = 4):
        super().__init__()
        stem = stem_channels
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, stride=2, padding=1), nn.GroupNorm(groups, stem), nn.ReLU())
        stages, in_ch = [], stem
        for name in TINY_CHANNELS:
            out_ch = TINY_CHANNELS[name]
            stages.append(
                nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1), nn.GroupNorm(groups, out_ch), nn.ReLU(),
                    nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.GroupNorm(groups, out_ch), nn.ReLU(),
                )
            )
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)

    def forward(self, x):
        features = {}
        x = self.stem(x)
        for name, stage in zip(TINY_CHANNELS, self.stages):
            x = stage(x)
            features[name] = x
        return features

    def output_shape(self):
        return {n: ShapeSpec(channels=TINY_CHANNELS[n], stride=TINY_STRIDES[n]) for n in TINY_CHANNELS}


def build_tiny_conv_backbone(cfg, input_shape):
    """``cfg.MODEL.BACKBONE.NAME = "build_tiny_conv_backbone"``."""
    return TinyConvBackbone()


if "build_tiny_conv_backbone" not in BACKBONE_REGISTRY:  # the module may be imported twice
    BACKBONE_REGISTRY.register(build_tiny_conv_backbone)


def tiny_cfg():
    """A ClassAgnosticMask2Former config small enough for CPU tests on 64 x 64 images."""
    cfg = get_cfg()
    add_mask2former_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "ClassAgnosticMask2Former"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_tiny_conv_backbone"
    cfg.MODEL.PIXEL_MEAN = [128.0, 128.0, 128.0]
    cfg.MODEL.PIXEL_STD = [64.0, 64.0, 64.0]
    head = cfg.MODEL.SEM_SEG_HEAD
    head.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    head.CONVS_DIM = 32
    head.MASK_DIM = 32
    head.NORM = "GN"
    head.TRANSFORMER_ENC_LAYERS = 1
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD = 64
    mf = cfg.MODEL.MASK_FORMER
    mf.HIDDEN_DIM = 32
    mf.NHEADS = 4
    mf.DIM_FEEDFORWARD = 64
    mf.DEC_LAYERS = 4
    mf.NUM_OBJECT_QUERIES = 8
    mf.TRAIN_NUM_POINTS = 256
    return cfg


def shapes_batch(size: int = 64):
    """Three RGB images (uint8-valued float, (3, size, size)) with 2-3 objects each: rectangles
    and discs of distinct colours on a grey background; returns Detectron2 input dicts."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def rect(y0, x0, y1, x1):
        return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)

    def disc(cy, cx, r):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2

    scenes = [
        [(rect(6, 6, 30, 34), (220, 40, 40)), (disc(44, 44, 13), (40, 200, 60))],
        [(disc(20, 22, 14), (40, 60, 220)), (rect(38, 8, 58, 56), (230, 200, 30))],
        [(rect(4, 36, 28, 60), (200, 40, 200)), (disc(46, 18, 12), (30, 200, 200)), (rect(40, 40, 60, 60), (240, 130, 20))],
    ]
    inputs = []
    for scene in scenes:
        image = torch.full((3, size, size), 100.0)
        masks = []
        for mask, colour in scene:
            image[:, mask] = torch.tensor(colour, dtype=torch.float32)[:, None]
            masks.append(mask)
        instances = Instances((size, size))
        instances.gt_masks = torch.stack(masks)
        instances.gt_classes = torch.arange(len(masks), dtype=torch.int64) + 5  # ignored
        inputs.append({"image": image, "height": size, "width": size, "instances": instances})
    return inputs
