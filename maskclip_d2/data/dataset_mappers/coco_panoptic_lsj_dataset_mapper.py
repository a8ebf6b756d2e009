"""Training mapper for COCO-panoptic-format datasets with large-scale jitter (LSJ).

One record (Mask2Former's panoptic format: ``file_name``, ``pan_seg_file_name``,
``segments_info`` with contiguous ``category_id`` and ``iscrowd``) becomes the image tensor and
``instances`` with ``gt_classes`` (N,) and ``gt_masks`` (N, H, W) of every non-crowd segment,
things and stuff alike: MaskCLIP classifies every panoptic segment. With ``class_agnostic``
(``INPUT.DATASET_MAPPER_NAME`` "coco_panoptic_lsj_class_agnostic") every segment is one class
"object" (``gt_classes`` all 0): the training data of the class-agnostic Mask R-CNN proposal
network (configs/coco/proposals/class_agnostic_mask_rcnn_R50_FPN_1x.yaml).
"""
import copy
import logging

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, Instances
from panopticapi.utils import rgb2id

__all__ = ["COCOPanopticLSJDatasetMapper", "build_lsj_augmentation"]


def build_lsj_augmentation(cfg, is_train=True):
    """Random flip, random rescale of IMAGE_SIZE by [MIN_SCALE, MAX_SCALE], fixed-size crop."""
    if not is_train:
        return []
    augmentations = []
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(
            T.RandomFlip(
                horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
            )
        )
    size = cfg.INPUT.IMAGE_SIZE
    augmentations += [
        T.ResizeScale(
            min_scale=cfg.INPUT.MIN_SCALE, max_scale=cfg.INPUT.MAX_SCALE,
            target_height=size, target_width=size,
        ),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]
    return augmentations


class COCOPanopticLSJDatasetMapper:
    """Maps one panoptic record to the model's training input (see module docstring)."""

    @configurable
    def __init__(self, is_train=True, *, augmentations, image_format, class_agnostic=False):
        """
        Args:
            class_agnostic: every segment gets class 0 ("object") instead of its category.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.class_agnostic = class_agnostic
        logging.getLogger(__name__).info(
            f"[COCOPanopticLSJDatasetMapper] augmentations: {augmentations}"
            + (", class-agnostic (every segment is class 0)" if class_agnostic else "")
        )

    @classmethod
    def from_config(cls, cfg, is_train=True, class_agnostic=False):
        return {
            "is_train": is_train,
            "augmentations": build_lsj_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "class_agnostic": class_agnostic,
        }

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        pan_seg_rgb = utils.read_image(dataset_dict.pop("pan_seg_file_name"), "RGB")

        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        # Transformed as the uint8 RGB PNG (nearest-neighbour resizing works on uint8 only),
        # then turned into ids, as Mask2Former does; padding gets an id no segment has (void).
        pan_seg = rgb2id(transforms.apply_segmentation(pan_seg_rgb))
        # True where the augmentation padded the image (Mask2Former's instance LSJ mapper's
        # "padding_mask"): not void, nothing is there
        padding_mask = ~transforms.apply_segmentation(np.ones(pan_seg_rgb.shape[:2], dtype=np.uint8)).astype(bool)

        height, width = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        segments = [s for s in dataset_dict.pop("segments_info") if not s.get("iscrowd", 0)]
        ids = np.array([s["id"] for s in segments], dtype=pan_seg.dtype)
        masks = pan_seg[None] == ids[:, None, None]  # (S, H, W)
        keep = np.flatnonzero(masks.any(axis=(1, 2)))  # segments cropped away are dropped
        classes = [0 if self.class_agnostic else segments[i]["category_id"] for i in keep]
        instances = Instances((height, width))
        instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
        instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(masks[keep])))
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = instances
        dataset_dict["padding_mask"] = torch.from_numpy(np.ascontiguousarray(padding_mask))
        return dataset_dict
