"""A CLIP of one's own architecture (MODEL.CLIP.NAME "custom"): stated in the config, loaded
strictly, head counts never guessed; over-long prompts are never cut silently."""
import logging

import pytest
import torch

from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.modeling.clip.openai_loader import CLIPArchitecture, build_clip_model, clip_architecture_from_cfg
from maskclip_d2.modeling.clip.text_encoder import CLIPTextEncoder

# 2 text heads on a 64-wide text tower: clip.model.build_model would guess 64 // 64 = 1.
ARCH = CLIPArchitecture(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=128,
                        vision_patch_size=8, context_length=8, vocab_size=49408,
                        transformer_width=64, transformer_heads=2, transformer_layers=1)


def custom_cfg(**overrides):
    cfg = get_maskclip_cfg()
    cfg.MODEL.CLIP.NAME = "custom"
    values = {f.upper(): getattr(ARCH, f) for f in ARCH.__dataclass_fields__}
    values["VISION_HEADS"] = 2
    values.update(overrides)
    for key, value in values.items():
        cfg.MODEL.CLIP.ARCHITECTURE[key] = value
    return cfg


def test_custom_clip_loads_its_stated_architecture_exactly(tmp_path):
    torch.manual_seed(0)
    saved = ARCH.build().eval()
    torch.save(saved.state_dict(), tmp_path / "clip.pth")
    architecture = clip_architecture_from_cfg(custom_cfg())
    assert architecture == ARCH
    loaded = build_clip_model("custom", str(tmp_path / "clip.pth"), architecture=architecture)
    assert loaded.transformer.resblocks[0].attn.num_heads == 2  # stated, not width // 64
    assert loaded.visual.transformer.resblocks[0].attn.num_heads == 2
    tokens = torch.randint(1, 400, (3, 8))
    tokens[:, -1] = 49407
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(tokens), saved.encode_text(tokens))
        assert torch.equal(loaded.encode_image(images), saved.encode_image(images))


def test_custom_clip_weights_of_another_shape_are_an_error(tmp_path):
    other = CLIPArchitecture(**{**ARCH.__dict__, "embed_dim": 16}).build()
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="do not fit the architecture stated in MODEL.CLIP.ARCHITECTURE"):
        build_clip_model("custom", str(tmp_path / "other.pth"), architecture=ARCH)


def test_custom_clip_config_errors_name_the_key():
    with pytest.raises(ValueError, match="VISION_HEADS is 4.*set VISION_HEADS to that"):
        clip_architecture_from_cfg(custom_cfg(VISION_HEADS=4))
    with pytest.raises(ValueError, match="embed_dim must be a positive integer"):
        clip_architecture_from_cfg(custom_cfg(EMBED_DIM=0))
    with pytest.raises(ValueError, match="vision_width 96 is not a multiple of 64"):
        clip_architecture_from_cfg(custom_cfg(VISION_WIDTH=96, VISION_HEADS=1))
    with pytest.raises(ValueError, match="needs its architecture"):
        build_clip_model("custom", "random")
    assert clip_architecture_from_cfg(get_maskclip_cfg()) is None  # named CLIPs: not custom


def test_prompt_longer_than_the_custom_context_is_never_cut_silently(caplog):
    encoder = CLIPTextEncoder(ARCH.build(), prompt_templates=["{}"])
    assert encoder.encode_text(["red blob"]).shape == (1, 32)
    long_name = "a very long class name that does not fit eight tokens"
    with caplog.at_level(logging.WARNING):
        assert encoder.encode_text([long_name]).shape == (1, 32)
    assert "exceed CLIP's context of 8 tokens" in caplog.text and long_name in caplog.text
