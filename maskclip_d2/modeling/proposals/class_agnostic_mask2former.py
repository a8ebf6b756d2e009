"""MaskCLIP's stage 1: Mask2Former with a binary object / no-object head.

It is trained alone on COCO panoptic masks (every segment, thing or stuff, is "an object") and
then frozen; MaskCLIP reads its mask proposals through :meth:`ClassAgnosticMask2Former.propose`.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn
from torch.nn import functional as F

from ..losses.criterion import SetCriterion, build_set_criterion, gt_masks_of
from .mask_former_head import MaskFormerHead

__all__ = ["ClassAgnosticMask2Former"]

# One class: "object". The head has it and no-object.
NUM_CLASSES = 1
OBJECT = 0


@META_ARCH_REGISTRY.register()
class ClassAgnosticMask2Former(nn.Module):
    """Class-agnostic Mask2Former, the mask proposal network of MaskCLIP.

    Training (``model.train()``): ``forward(batched_inputs)`` takes Detectron2 dataset dicts
    with ``"image"`` (3, H, W) and ``"instances"`` whose ``gt_masks`` (a (N, H, W) tensor,
    ``BitMasks`` or ``PolygonMasks``) are the objects; ``gt_classes`` is ignored. It returns the
    weighted losses (``loss_ce``, ``loss_mask``, ``loss_dice`` and their ``_i`` auxiliary twins).

    Inference: ``forward`` returns, per image, ``{"proposals": {"mask_logits": (Q, h, w),
    "objectness": (Q,)}}``: mask logits at the output resolution (the dict's ``"height"`` and
    ``"width"``, else the input image's) and the probability that each query is an object.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: SetCriterion,
        size_divisibility: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ):
        """
        Args:
            backbone: a Detectron2 backbone giving the features the head reads.
            sem_seg_head: pixel decoder + transformer decoder with a 1-class (+ no-object) head.
            criterion: the training losses (1 class).
            size_divisibility: inputs are padded to a multiple of this; < 0 = the backbone's.
            pixel_mean, pixel_std: per-channel normalisation of the input images.
        """
        super().__init__()
        if sem_seg_head.num_classes != NUM_CLASSES or criterion.num_classes != NUM_CLASSES:
            raise ValueError("the class-agnostic head and criterion must have num_classes = 1")
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.size_divisibility = size_divisibility if size_divisibility >= 0 else backbone.size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        sem_seg_head = MaskFormerHead(cfg, backbone.output_shape(), NUM_CLASSES)
        mf = cfg.MODEL.MASK_FORMER
        criterion = build_set_criterion(NUM_CLASSES, mf, save_empty_weight=True,
                                        void_unpenalised_fraction=mf.VOID_UNPENALISED_FRACTION)
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": criterion,
            "size_divisibility": mf.SIZE_DIVISIBILITY,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalised images, padded to ``size_divisibility`` and batched."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        if len(images) == 1:
            # What ImageList.from_tensors does for one image, in Python integer arithmetic:
            # the exported graph (tools/export_onnx.py) keeps the image size symbolic this way.
            height, width = images[0].shape[-2:]
            stride = max(self.size_divisibility, 1)
            padded = F.pad(images[0], (0, -width % stride, 0, -height % stride))
            return ImageList(padded[None], [(height, width)])
        return ImageList.from_tensors(images, self.size_divisibility)

    def predict(self, images: torch.Tensor) -> Dict:
        """The head's raw outputs for normalised, padded images (B, 3, H, W): ``pred_logits``
        (B, Q, 2), ``pred_masks`` (B, Q, H / 4, W / 4), ``aux_outputs``."""
        return self.sem_seg_head(self.backbone(images))

    def propose(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask proposals for MaskCLIP.

        Args:
            images: (B, 3, H, W), normalised with this model's ``pixel_mean`` / ``pixel_std``
                and padded (ideally to a multiple of ``size_divisibility``), e.g.
                ``self.preprocess_image(batched_inputs).tensor``.

        Returns:
            mask_logits: (B, Q, H / s, W / s), s = the pixel decoder's common stride (4); the
                proposals cover the padded image, upsample them to (H, W) and crop.
            objectness_logits: (B, Q), log-odds of "object" vs "no object":
                ``sigmoid(objectness_logits)`` is the head's softmax probability of object.
        """
        outputs = self.predict(images)
        logits = outputs["pred_logits"]
        return outputs["pred_masks"], logits[..., OBJECT] - logits[..., NUM_CLASSES]

    def prepare_targets(self, batched_inputs: List[Dict], padded_size: Tuple[int, int]) -> List[Dict]:
        """Criterion targets: every ground-truth mask is an object (label 0), padded with zeros
        to ``padded_size`` (the batched images' size); with the criterion's
        ``void_unpenalised_fraction``, also ``"void"``: the image's pixels that no mask covers,
        the mapper's ``"padding_mask"`` (True = padding) and the batch padding excluded."""
        targets = []
        for x in batched_inputs:
            gt_masks = gt_masks_of(x).to(self.device)
            padded = gt_masks.new_zeros((gt_masks.shape[0], *padded_size))
            padded[:, : gt_masks.shape[1], : gt_masks.shape[2]] = gt_masks
            labels = torch.full((gt_masks.shape[0],), OBJECT, dtype=torch.int64, device=self.device)
            target = {"labels": labels, "masks": padded}
            if self.criterion.void_unpenalised_fraction > 0:
                void = ~padded.any(0)
                void[gt_masks.shape[1]:] = False
                void[:, gt_masks.shape[2]:] = False
                if "padding_mask" in x:
                    padding = x["padding_mask"].to(self.device)
                    void[: padding.shape[0], : padding.shape[1]] &= ~padding
                target["void"] = void
            targets.append(target)
        return targets

    def forward(self, batched_inputs: List[Dict]):
        """See the class docstring for the inputs and outputs in training and inference."""
        images = self.preprocess_image(batched_inputs)
        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError(
                    "training ClassAgnosticMask2Former needs 'instances' with 'gt_masks' in every "
                    "input dict; use a mapper that keeps masks (e.g. the COCO panoptic mapper)"
                )
            outputs = self.predict(images.tensor)
            targets = self.prepare_targets(batched_inputs, tuple(images.tensor.shape[-2:]))
            return self.criterion(outputs, targets)

        mask_logits, objectness_logits = self.propose(images.tensor)
        mask_logits = F.interpolate(mask_logits, size=images.tensor.shape[-2:], mode="bilinear", align_corners=False)
        results = []
        for masks, objectness, x, image_size in zip(mask_logits, objectness_logits, batched_inputs, images.image_sizes):
            height = x.get("height", image_size[0])
            width = x.get("width", image_size[1])
            masks = sem_seg_postprocess(masks, image_size, height, width)
            results.append({"proposals": {"mask_logits": masks, "objectness": objectness.sigmoid()}})
        return results
