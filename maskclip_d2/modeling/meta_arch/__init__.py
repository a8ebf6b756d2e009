from .class_agnostic_mask2former import ClassAgnosticMask2Former
from .mask_former_head import MaskFormerHead
from .maskclip import MaskCLIP
