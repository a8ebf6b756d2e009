"""MaskCLIP modeling, in the order one image flows through it: CLIP loading, the proposal
network (stage 1), the MaskCLIP Visual Encoder and the CLIP Baseline, the text side, and the
meta-architectures (importing registers them)."""
from .clip_loader import build_clip_model, build_clip_tokenizer, load_clip
from .mask2former_config import add_mask2former_config
from .maskclip_encoder import FrozenCLIPImageEncoder, MaskCLIPVisualEncoder, RelativeMaskAttention, mask_visibility
from .clip_baseline import CLIPBaselineEncoder
from .text_encoder import CLIPTextEncoder
from .meta_arch import ClassAgnosticMask2Former, MaskCLIP
