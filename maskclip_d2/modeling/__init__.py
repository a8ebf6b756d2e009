"""MaskCLIP modeling: CLIP loading, the MaskCLIP Visual Encoder, text side, meta-architecture."""
from .clip_loader import build_clip_model, load_clip
