"""The frozen CLIP: where weights come from (``weights``), building OpenAI / OpenCLIP / custom
models (``openai_loader``, ``openclip_loader``), the towers' forward passes (``towers``), CLIP's
pixel normalisation and the text encoder that embeds a vocabulary."""
from .normalization import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from .openai_loader import CLIP_ARCHITECTURES, CLIPArchitecture, build_clip_model, build_clip_tokenizer, load_clip
from .text_encoder import CLIPTextEncoder
