"""Stage 1: class-agnostic mask proposals. The Mask2Former (``class_agnostic_mask2former``,
``mask_former_head``, ``pixel_decoder/``, ``transformer_decoder/``) and the proposal sources the
MaskCLIP meta-architecture reads masks from (``sources``: Mask2Former, Mask R-CNN, ground truth)."""
from .class_agnostic_mask2former import ClassAgnosticMask2Former
from .mask_former_head import MaskFormerHead
from .sources import build_proposal_network
