"""MaskCLIP modeling: CLIP loading, the MaskCLIP Visual Encoder, text side, meta-architecture."""
from .clip_loader import build_clip_model, load_clip
from .maskclip_encoder import MaskCLIPVisualEncoder, RelativeMaskAttention, mask_visibility
# stage 1, the class-agnostic Mask2Former proposal network (importing registers it)
from .mask2former_config import add_mask2former_config
from .meta_arch import ClassAgnosticMask2Former, MaskCLIP
from .clip_baseline import CLIPBaselineEncoder
from .text_encoder import CLIPTextEncoder
