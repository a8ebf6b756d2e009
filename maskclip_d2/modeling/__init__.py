"""MaskCLIP modeling, one folder per question, in the order one image flows through it:

* ``clip/``: the frozen CLIP (weights, OpenAI / OpenCLIP / custom towers, text encoder);
* ``proposals/``: stage 1, the class-agnostic Mask2Former and the other proposal sources;
* ``encoder/``: the paper's MaskCLIP Visual Encoder (mask class tokens, RMA) and the CLIP Baseline;
* ``losses/``: Mask2Former's set criterion and Hungarian matcher, which both stages train with;
* ``maskclip.py``: the meta-architecture tying them together, and ``postprocessing.py`` (with
  ``postprocessing_reference.py``, the straightforward version it is tested against).

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
