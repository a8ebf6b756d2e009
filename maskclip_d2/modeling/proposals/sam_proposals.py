"""Segment Anything (Kirillov et al., 2023) as MaskCLIP's proposal source.

``MODEL.MASKCLIP.PROPOSAL_NETWORK "sam"``: Meta's ``segment-anything`` package builds SAM
(``MODEL.MASKCLIP.SAM.MODEL_TYPE``) and its ``SamAutomaticMaskGenerator`` (parameters under
``MODEL.MASKCLIP.SAM``, SAM's defaults) turns each input image into class-agnostic binary
masks; those become proposals in the form every source gives (``proposals.py``):

* order: by SAM's predicted IoU, then stability score, then area (descending), then the box
  and the prompt point, so the order never depends on the generator's batching or crops; the
  first ``MODEL.MASKCLIP.NUM_PROPOSALS`` are kept; masks of zero area are dropped;
* mask logits: each binary mask, over the image (or the padded batch, top-left), area-averaged
  to S x S, the covered fraction f as logit ``(2 f - 1) * GT_MASK_LOGIT`` (positive where more
  than half a cell is covered);
* objectness: SAM has no objectness. ``SAM.OBJECTNESS`` "predicted_iou" (default) uses SAM's
  own estimate of the mask's quality (the IoU head, clamped to [0, 1], what the generator
  filters and ranks by); "stability_score" the stability score; "one" none (every mask 1,
  as ground-truth masks). It only matters where MaskCLIP multiplies class probabilities by
  objectness (modes "mask_tokens" and "baseline"); in "rma" mode the no-object class decides.

SAM sees the model's input image (``INPUT.MIN_SIZE_TEST`` resize, as every proposal source
does); the generator resizes it to SAM's own input size. The checkpoint is
``MODEL.MASKCLIP.PROPOSAL_WEIGHTS``, read with ``weights_only`` loading; nothing is downloaded.
"""
import logging
import os
from functools import partial
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...checkpoint import StrictCheckpointer

__all__ = [
    "SAMProposals", "build_sam", "build_sam_proposals", "check_sam_config", "load_frozen_sam", "SAM_MODEL_TYPES",
    "SAM_CHECKPOINTS_URL", "SAM_OBJECTNESS", "generator_kwargs",
]

logger = logging.getLogger(__name__)

SAM_CHECKPOINTS_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
# The official checkpoints of each model type (from SAM_CHECKPOINTS_URL).
SAM_CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth",
}
SAM_OBJECTNESS = ("predicted_iou", "stability_score", "one")
# "tiny": a SAM of the package's modules at 128 px and width 64, for tests and smoke runs
# with random weights (no checkpoint exists for it).
SAM_TINY = dict(
    image_size=128, patch_size=16, encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
    encoder_global_attn_indexes=(1,), window_size=4, prompt_embed_dim=32, mask_in_chans=4,
    decoder_depth=2, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32,
)
SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "tiny")


def _build_tiny_sam() -> nn.Module:
    from segment_anything.modeling import (
        ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer,
    )

    a = SAM_TINY
    grid = a["image_size"] // a["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=a["image_size"], patch_size=a["patch_size"], embed_dim=a["encoder_embed_dim"],
            depth=a["encoder_depth"], num_heads=a["encoder_num_heads"], mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=a["encoder_global_attn_indexes"], window_size=a["window_size"],
            out_chans=a["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"], image_embedding_size=(grid, grid),
            input_image_size=(a["image_size"], a["image_size"]), mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=a["decoder_depth"], embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["decoder_mlp_dim"], num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"], iou_head_depth=3,
            iou_head_hidden_dim=a["iou_head_hidden_dim"],
        ),
    )


def build_sam(model_type: str) -> nn.Module:
    """SAM of ``model_type`` with random weights: the package's own builder for vit_b / vit_l /
    vit_h (without its checkpoint argument, whose ``torch.load`` unpickles anything), or the
    tiny test model."""
    if model_type == "tiny":
        return _build_tiny_sam()
    from segment_anything import sam_model_registry

    return sam_model_registry[model_type](checkpoint=None)


def load_frozen_sam(sam: nn.Module, weights: str) -> nn.Module:
    """``sam`` with the checkpoint ``weights`` loaded (strict, ``weights_only``; "" keeps its
    random weights, with a warning), frozen, in eval mode."""
    if weights:
        StrictCheckpointer(sam).load(os.path.expanduser(weights))
    else:
        logger.warning(
            "MODEL.MASKCLIP.PROPOSAL_WEIGHTS is empty: SAM keeps its RANDOM weights unless "
            f"MODEL.WEIGHTS holds a full MaskCLIP checkpoint (SAM's checkpoints: {SAM_CHECKPOINTS_URL})"
        )
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam.eval()


def generator_kwargs(cfg) -> Dict:
    """``SamAutomaticMaskGenerator``'s keyword arguments from ``MODEL.MASKCLIP.SAM``."""
    s = cfg.MODEL.MASKCLIP.SAM
    return {
        "points_per_side": s.POINTS_PER_SIDE,
        "points_per_batch": s.POINTS_PER_BATCH,
        "pred_iou_thresh": s.PRED_IOU_THRESH,
        "stability_score_thresh": s.STABILITY_SCORE_THRESH,
        "stability_score_offset": s.STABILITY_SCORE_OFFSET,
        "box_nms_thresh": s.BOX_NMS_THRESH,
        "crop_n_layers": s.CROP_N_LAYERS,
        "crop_nms_thresh": s.CROP_NMS_THRESH,
        "crop_overlap_ratio": s.CROP_OVERLAP_RATIO,
        "crop_n_points_downscale_factor": s.CROP_N_POINTS_DOWNSCALE_FACTOR,
        "min_mask_region_area": s.MIN_MASK_REGION_AREA,
    }


def check_sam_config(cfg) -> None:
    """ValueError for a SAM config that cannot work (unknown model type or objectness, bad
    generator parameters) and FileNotFoundError for a checkpoint that is not there: called
    before anything is built or loaded."""
    s, mc = cfg.MODEL.MASKCLIP.SAM, cfg.MODEL.MASKCLIP
    if s.MODEL_TYPE not in SAM_MODEL_TYPES:
        raise ValueError(f"MODEL.MASKCLIP.SAM.MODEL_TYPE must be one of {SAM_MODEL_TYPES}, got {s.MODEL_TYPE!r}")
    if s.OBJECTNESS not in SAM_OBJECTNESS:
        raise ValueError(f"MODEL.MASKCLIP.SAM.OBJECTNESS must be one of {SAM_OBJECTNESS}, got {s.OBJECTNESS!r}")
    for key in ("POINTS_PER_SIDE", "POINTS_PER_BATCH", "CROP_N_POINTS_DOWNSCALE_FACTOR"):
        if s[key] < 1:
            raise ValueError(f"MODEL.MASKCLIP.SAM.{key} must be at least 1, got {s[key]}")
    for key in ("CROP_N_LAYERS", "MIN_MASK_REGION_AREA"):
        if s[key] < 0:
            raise ValueError(f"MODEL.MASKCLIP.SAM.{key} must be >= 0, got {s[key]}")
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        raise ImportError(
            "MODEL.MASKCLIP.PROPOSAL_NETWORK 'sam' needs Meta's segment-anything package: "
            "pip install segment-anything==1.0"
        ) from None
    weights = mc.PROPOSAL_WEIGHTS
    if weights and not os.path.isfile(os.path.expanduser(weights)):
        official = SAM_CHECKPOINT_FILES.get(s.MODEL_TYPE)
        raise FileNotFoundError(
            f"SAM checkpoint {weights} (MODEL.MASKCLIP.PROPOSAL_WEIGHTS) not found. SAM's "
            f"checkpoints come from {SAM_CHECKPOINTS_URL}"
            + (f" ({official} for MODEL.MASKCLIP.SAM.MODEL_TYPE {s.MODEL_TYPE})" if official else "")
            + "; download it yourself and set the path (nothing is downloaded for you)"
        )


def _ordered(records: List[Dict]) -> List[Dict]:
    """The generator's records, zero-area masks dropped, in the documented order."""
    records = [r for r in records if r["area"] > 0]
    return sorted(records, key=lambda r: (
        -r["predicted_iou"], -r["stability_score"], -r["area"], tuple(r["bbox"]),
        tuple(r["point_coords"][0]),
    ))


class SAMProposals(nn.Module):
    """SAM's automatic masks as proposals (see the module docstring)."""

    def __init__(self, sam: nn.Module, generator: Dict, num_proposals: int, mask_logit: float,
                 objectness: str = "predicted_iou", input_format: str = "RGB"):
        """
        Args:
            sam: a ``segment_anything`` ``Sam``, frozen.
            generator: ``SamAutomaticMaskGenerator``'s keyword arguments (``generator_kwargs``).
            num_proposals: masks kept per image, the first in the documented order.
            mask_logit: the logit of a fully covered cell (``GT_MASK_LOGIT``).
            objectness: one of ``SAM_OBJECTNESS``.
            input_format: channel order of the inputs' ``"image"`` ("RGB" or "BGR").
        """
        super().__init__()
        if objectness not in SAM_OBJECTNESS:
            raise ValueError(f"objectness must be one of {SAM_OBJECTNESS}, got {objectness!r}")
        self.sam = sam
        self.generator = dict(generator)
        self.num_proposals = num_proposals
        self.mask_logit = mask_logit
        self.objectness = objectness
        self.input_format = input_format

    def train(self, mode: bool = True):
        super().train(mode)
        self.sam.eval()
        return self

    @torch.no_grad()
    def generate(self, image: np.ndarray) -> List[Dict]:
        """SamAutomaticMaskGenerator's records for an (H, W, 3) uint8 RGB image (binary masks
        in ``"segmentation"``), in the documented order, at most ``num_proposals``."""
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(self.sam, output_mode="binary_mask", **self.generator)
        return _ordered(generator.generate(image))[: self.num_proposals]

    def _rgb(self, image: torch.Tensor) -> np.ndarray:
        if image.dtype != torch.uint8:
            image = image.round().clamp(0, 255).to(torch.uint8)
        if self.input_format == "BGR":
            image = image.flip(0)
        return np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())

    def _score(self, record: Dict) -> float:
        if self.objectness == "one":
            return 1.0
        return min(max(float(record[self.objectness]), 0.0), 1.0)

    @torch.no_grad()
    def forward(
        self, batched_inputs: List[Dict], size: int, padded_size: Optional[Tuple[int, int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, Q, S, S) mask logits and (B, Q) objectness, Q the largest mask count of the
        batch; images with fewer masks are padded with empty masks of objectness 0."""
        device = next(self.sam.parameters()).device
        per_image = []
        for x in batched_inputs:
            records = self.generate(self._rgb(x["image"]))
            height, width = x["image"].shape[-2:]
            covered = torch.zeros((0, size, size), device=device)
            if records:
                masks = torch.from_numpy(np.stack([r["segmentation"] for r in records])).to(device).float()
                if padded_size is not None:
                    masks = F.pad(masks, (0, padded_size[1] - width, 0, padded_size[0] - height))
                covered = F.adaptive_avg_pool2d(masks[None], (size, size))[0]
            per_image.append(((2 * covered - 1) * self.mask_logit, [self._score(r) for r in records]))
        count = max([len(s) for _, s in per_image], default=0)
        logits = torch.full((len(per_image), count, size, size), -self.mask_logit, device=device)
        objectness = torch.zeros((len(per_image), count), device=device)
        for b, (image_logits, scores) in enumerate(per_image):
            logits[b, : len(scores)] = image_logits
            objectness[b, : len(scores)] = torch.tensor(scores, device=device)
        return logits, objectness


def build_sam_proposals(cfg) -> SAMProposals:
    """The "sam" proposal source of ``cfg`` (checked first by ``check_sam_config``)."""
    check_sam_config(cfg)
    mc = cfg.MODEL.MASKCLIP
    sam = load_frozen_sam(build_sam(mc.SAM.MODEL_TYPE), mc.PROPOSAL_WEIGHTS)
    return SAMProposals(
        sam, generator_kwargs(cfg), mc.NUM_PROPOSALS, mc.GT_MASK_LOGIT, mc.SAM.OBJECTNESS,
        cfg.INPUT.FORMAT,
    )
