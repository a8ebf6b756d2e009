"""MaskCLIP modeling, one folder per question, in the order one image flows through it:

* ``clip/``: the frozen CLIP (weights, OpenAI / OpenCLIP / custom towers, text encoder);
* ``proposals/``: stage 1, the class-agnostic Mask2Former and the other proposal sources;
* ``encoder/``: the paper's MaskCLIP Visual Encoder (mask class tokens, RMA) and the CLIP Baseline;
* ``maskclip.py``: the meta-architecture tying them together, with ``criterion.py``,
  ``matcher.py`` and ``postprocessing.py``.

Importing registers the meta-architectures."""
from .clip import CLIPTextEncoder, build_clip_model, build_clip_tokenizer, load_clip
from .proposals import ClassAgnosticMask2Former
from .encoder import (
    CLIPBaselineEncoder,
    FrozenCLIPImageEncoder,
    MaskCLIPVisualEncoder,
    RelativeMaskAttention,
    mask_visibility,
)
from .maskclip import MaskCLIP
