"""MaskCLIP's first stage: class-agnostic mask proposals, frozen.

Every proposal source maps a batch of Detectron2 inputs, the CLIP input resolution S and the
padded batch size (or None) to ``(mask_logits, objectness)``: ``mask_logits`` (B, Q, S, S)
cover each image's unpadded extent resampled to S x S (``padded_size`` None: MaskCLIP's
``CLIP_INPUT`` "crop"), or the whole ``padded_size`` (H, W) extent of the padded batch, whose
images sit top-left ("padded_batch", the authors'); ``objectness`` (B, Q) in [0, 1], proposals
in the network's query order. Sources, chosen by
``MODEL.MASKCLIP.PROPOSAL_NETWORK``:

* ``"mask2former"``: the class-agnostic Mask2Former (``ClassAgnosticMask2Former``);
* ``"maskrcnn"``: Detectron2's Mask R-CNN with one class and class-agnostic masks;
* ``"sam"``: Segment Anything's automatic masks (``sam_proposals.py``);
* ``"gt"``: the ground-truth masks of the inputs (the paper's Table 7 setting).
"""
import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.modeling import GeneralizedRCNN
from torch import nn
from torch.nn import functional as F
from torchvision.ops import roi_align

from ...checkpoint import StrictCheckpointer
from ..losses.criterion import gt_masks_of
from .class_agnostic_mask2former import ClassAgnosticMask2Former
from .sam_proposals import build_sam_proposals

__all__ = [
    "build_proposal_network", "Mask2FormerProposals", "MaskRCNNProposals", "GTProposals",
    "paste_soft_masks", "proposal_rcnn_cfg",
]

logger = logging.getLogger(__name__)


def crop_and_resize(mask_logits: torch.Tensor, image_sizes, stride: float, size: int) -> torch.Tensor:
    """Crops each image's valid extent out of padded low-resolution maps and resamples it.

    Args:
        mask_logits: (B, Q, h, w) maps over the padded batch, ``stride`` input pixels apart.
        image_sizes: B (height, width) of the unpadded images, in input pixels.
        size: output side S.
    Returns:
        (B, Q, S, S): bilinear, pixel-centre aligned (``roi_align(aligned=True)``).
    """
    # Built with tensor operations, so an exported graph keeps the image size symbolic.
    sizes = torch.stack(
        [torch.stack([torch.scalar_tensor(w), torch.scalar_tensor(h)]) for h, w in image_sizes]
    ).to(device=mask_logits.device, dtype=mask_logits.dtype)
    index = torch.arange(len(image_sizes), device=mask_logits.device, dtype=mask_logits.dtype)
    boxes = torch.cat([index[:, None], sizes.new_zeros(len(image_sizes), 2), sizes], dim=1)
    return roi_align(mask_logits, boxes, (size, size), 1.0 / stride, sampling_ratio=0, aligned=True)


def _frozen(module: nn.Module, weights: str) -> nn.Module:
    if weights:
        StrictCheckpointer(module).load(weights)
    else:
        logger.warning(
            "MODEL.MASKCLIP.PROPOSAL_WEIGHTS is empty: the proposal network keeps its "
            "initialisation unless MODEL.WEIGHTS holds a full MaskCLIP checkpoint."
        )
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class _FrozenProposals(nn.Module):
    """Keeps the wrapped network in eval mode and out of autograd."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.network.eval()
        return self


class Mask2FormerProposals(_FrozenProposals):
    def __init__(self, network: ClassAgnosticMask2Former, num_proposals: int):
        super().__init__()
        self.network = network
        self.num_proposals = num_proposals

    @torch.no_grad()
    def forward(
        self, batched_inputs: List[Dict], size: int, padded_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        images = self.network.preprocess_image(batched_inputs)
        mask_logits, objectness_logits = self.network.propose(images.tensor)
        objectness = objectness_logits.sigmoid()
        k = min(self.num_proposals, objectness.shape[1])
        top = objectness.topk(k, dim=1).indices.sort(dim=1).values  # kept in query order
        objectness = objectness.gather(1, top)
        mask_logits = mask_logits.gather(
            1, top[..., None, None].expand(-1, -1, *mask_logits.shape[-2:])
        )
        if padded_size is None:
            # an int, not a ratio of (symbolic) sizes: an exported graph keeps the image size
            stride = self.network.sem_seg_head.pixel_decoder.common_stride
            return crop_and_resize(mask_logits, images.image_sizes, stride, size), objectness
        if tuple(images.tensor.shape[-2:]) != tuple(padded_size):
            raise ValueError(
                f"the proposal network padded the batch to {tuple(images.tensor.shape[-2:])}, "
                f"MaskCLIP expected {tuple(padded_size)}: MODEL.MASK_FORMER.SIZE_DIVISIBILITY "
                f"must be the proposal network's"
            )
        # the authors': the padded maps resized as a whole
        return F.interpolate(mask_logits, (size, size), mode="bilinear", align_corners=False), objectness


def paste_soft_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size, size: int) -> torch.Tensor:
    """Mask R-CNN's box-relative soft masks, pasted over the whole image resampled to S x S.

    The pasting of Detectron2's ``paste_masks_in_image`` (bilinear ``grid_sample`` at pixel
    centres, zero outside the box), but on an S x S grid spanning the image's
    ``image_size`` = (height, width) and keeping probabilities (``paste_masks_in_image``
    thresholds them, or quantises them to uint8). Pasting onto the S x S grid directly equals
    pasting at the image size and resizing with ``align_corners=False``, without the detour.

    Args:
        masks: (N, M, M) probabilities in [0, 1].
        boxes: (N, 4) XYXY boxes in image pixels.
    Returns:
        (N, S, S) probabilities.
    """
    height, width = image_size
    scale = boxes.new_tensor([size / width, size / height, size / width, size / height])
    x0, y0, x1, y1 = (boxes * scale).float().split(1, dim=1)  # (N, 1) each, in S x S pixels
    centres = torch.arange(size, device=masks.device, dtype=torch.float32) + 0.5
    gx = ((centres - x0) / (x1 - x0).clamp(min=1e-6) * 2 - 1)[:, None, :].expand(-1, size, -1)
    gy = ((centres - y0) / (y1 - y0).clamp(min=1e-6) * 2 - 1)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([gx, gy], dim=3)
    return F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0]


class MaskRCNNProposals(_FrozenProposals):
    """Mask R-CNN's detections as proposals: their soft masks pasted over the whole unpadded
    image at S x S as logits clamped to +-``mask_logit`` (outside its box a mask is
    -``mask_logit``), their scores as objectness; fewer than Q detections are padded with empty
    masks (logits -``mask_logit``) of objectness 0."""

    def __init__(self, network: GeneralizedRCNN, num_proposals: int, mask_logit: float):
        super().__init__()
        self.network = network
        self.num_proposals = num_proposals
        self.mask_logit = mask_logit

    @torch.no_grad()
    def forward(
        self, batched_inputs: List[Dict], size: int, padded_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        # Detections in the coordinates of the network's input (each "image" as given, before
        # padding); det.image_size is that image's unpadded (height, width).
        detections = self.network.inference(batched_inputs, do_postprocess=False)
        device = self.network.device
        logits = torch.full(
            (len(detections), self.num_proposals, size, size), -self.mask_logit, device=device
        )
        objectness = torch.zeros((len(detections), self.num_proposals), device=device)
        for b, det in enumerate(detections):
            det = det[: self.num_proposals]
            if len(det) == 0:
                continue
            # pred_masks: (N, 1, M, M) probabilities (class-agnostic: one mask per detection)
            extent = det.image_size if padded_size is None else padded_size
            probs = paste_soft_masks(det.pred_masks[:, 0], det.pred_boxes.tensor, extent, size)
            logits[b, : len(det)] = torch.logit(probs, eps=1e-6).clamp(-self.mask_logit, self.mask_logit)
            objectness[b, : len(det)] = det.scores
        return logits, objectness


class GTProposals(nn.Module):
    """Ground-truth masks as proposals: logits +-``mask_logit``, objectness 1; images with
    fewer masks than the batch's largest are padded with empty masks of objectness 0."""

    # MaskCLIP outputs these masks themselves, not their encoder-refined version (Table 7).
    outputs_are_ground_truth = True

    def __init__(self, mask_logit: float):
        super().__init__()
        self.mask_logit = mask_logit

    def forward(
        self, batched_inputs: List[Dict], size: int, padded_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        masks = [gt_masks_of(x) for x in batched_inputs]
        if padded_size is not None:
            masks = [F.pad(m.float(), (0, padded_size[1] - m.shape[-1], 0, padded_size[0] - m.shape[-2]))
                     for m in masks]
        count = max([len(m) for m in masks], default=0)
        logits = torch.full((len(masks), count, size, size), -self.mask_logit)
        objectness = torch.zeros((len(masks), count))
        for b, m in enumerate(masks):
            if len(m):
                resized = F.interpolate(m[None].float(), (size, size), mode="nearest")[0]
                logits[b, : len(m)] = (2 * resized - 1) * self.mask_logit
                objectness[b, : len(m)] = 1.0
        return logits, objectness


def proposal_rcnn_cfg(cfg):
    """The config of the "maskrcnn" proposal network: MaskCLIP's ``cfg`` (its R-CNN keys, which
    must be those of the stage-1 config, e.g.
    configs/coco/proposals/class_agnostic_mask_rcnn_R50_FPN_1x.yaml) with one class,
    class-agnostic masks and NUM_PROPOSALS detections per image."""
    rcnn_cfg = cfg.clone()
    rcnn_cfg.defrost()
    rcnn_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    rcnn_cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    rcnn_cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    rcnn_cfg.MODEL.MASK_ON = True
    rcnn_cfg.TEST.DETECTIONS_PER_IMAGE = cfg.MODEL.MASKCLIP.NUM_PROPOSALS
    return rcnn_cfg


def build_proposal_network(cfg) -> nn.Module:
    """The proposal source named by ``MODEL.MASKCLIP.PROPOSAL_NETWORK``, frozen."""
    mc = cfg.MODEL.MASKCLIP
    name = mc.PROPOSAL_NETWORK
    if name == "mask2former":
        network = _frozen(ClassAgnosticMask2Former(cfg), mc.PROPOSAL_WEIGHTS)
        return Mask2FormerProposals(network, mc.NUM_PROPOSALS)
    if name == "maskrcnn":
        network = _frozen(GeneralizedRCNN(proposal_rcnn_cfg(cfg)), mc.PROPOSAL_WEIGHTS)
        return MaskRCNNProposals(network, mc.NUM_PROPOSALS, mc.GT_MASK_LOGIT)
    if name == "sam":
        return build_sam_proposals(cfg)
    if name == "gt":
        return GTProposals(mc.GT_MASK_LOGIT)
    raise ValueError(
        f"MODEL.MASKCLIP.PROPOSAL_NETWORK must be 'mask2former', 'maskrcnn', 'sam' or 'gt', got {name!r}"
    )
