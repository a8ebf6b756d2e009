"""The normalisation of CLIP's preprocessing (``clip.clip._transform``), RGB in [0, 1]; the
config's MODEL.CLIP.PIXEL_MEAN / PIXEL_STD defaults are these, in 0-255 units."""

__all__ = ["CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD"]

CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
