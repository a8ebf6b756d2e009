"""A tiny random CLIP with OpenAI's vocabulary (``clip.tokenize`` works), for the text-side tests."""
import pytest
import torch
from clip.model import CLIP


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    # OpenAI's vocabulary size, so that clip.tokenize works; everything else tiny.
    return CLIP(
        embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64,
        vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=64,
        transformer_heads=1, transformer_layers=2,
    ).eval()
