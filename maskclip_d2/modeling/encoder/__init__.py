"""The paper's encoder: the MaskCLIP Visual Encoder (mask class tokens and Relative Mask
Attention), the CLIP Baseline it is compared with, and the dense Eq. 3-5 reference."""
from .clip_baseline import CLIPBaselineEncoder
from .maskclip_encoder import FrozenCLIPImageEncoder, MaskCLIPVisualEncoder, RelativeMaskAttention, mask_visibility
