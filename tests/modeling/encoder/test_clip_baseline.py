"""CLIPBaselineEncoder: the paper's CLIP Baseline, every masked image through CLIP."""
import pytest
import torch
from clip.model import CLIP

from maskclip_d2.modeling import CLIPBaselineEncoder
from maskclip_d2.modeling.encoder.clip_baseline import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return CLIP(
        embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64,
        vision_patch_size=8, context_length=8, vocab_size=64, transformer_width=64,
        transformer_heads=1, transformer_layers=1,
    ).eval()


def inputs(batch=2, masks=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=g)
    logits = torch.randn(batch, masks, 32, 32, generator=g) * 3
    logits[:, 0] = 5.0  # whole image
    logits[:, 1] = -5.0  # empty
    return images, logits


def test_each_feature_is_clip_of_the_masked_image(clip_model):
    images, logits = inputs()
    encoder = CLIPBaselineEncoder(clip_model.visual, chunk_size=3)
    with torch.no_grad():
        out = encoder(images, logits)
        black = -torch.tensor(CLIP_PIXEL_MEAN).view(3, 1, 1) / torch.tensor(CLIP_PIXEL_STD).view(3, 1, 1)
        for b in range(2):
            for m in range(5):
                keep = torch.sigmoid(logits[b, m]) >= 0.5
                masked = torch.where(keep, images[b], black)  # mask * image on RGB: black outside
                expected = clip_model.encode_image(masked[None])[0]
                assert torch.allclose(out["features"][b, m], expected, atol=1e-5), (b, m)
        whole = clip_model.encode_image(images)
    assert out["masks"] == []
    assert out["features"].shape == (2, 5, 32)
    assert torch.allclose(out["features"][:, 0], whole, atol=1e-5)
    assert torch.isfinite(out["features"]).all()


def test_chunking_and_other_masks_do_not_matter(clip_model):
    images, logits = inputs(masks=7)
    with torch.no_grad():
        one_by_one = CLIPBaselineEncoder(clip_model.visual, chunk_size=1)(images, logits)
        at_once = CLIPBaselineEncoder(clip_model.visual, chunk_size=100)(images, logits)
        subset = CLIPBaselineEncoder(clip_model.visual)(images, logits[:, 3:5])
    assert torch.allclose(one_by_one["features"], at_once["features"], atol=1e-5)
    assert torch.allclose(subset["features"], at_once["features"][:, 3:5], atol=1e-5)


def test_threshold_and_no_masks(clip_model):
    images, logits = inputs()
    with torch.no_grad():
        none = CLIPBaselineEncoder(clip_model.visual)(images, logits[:, :0])
        strict = CLIPBaselineEncoder(clip_model.visual, mask_threshold=0.999)(images, logits)
        empty = CLIPBaselineEncoder(clip_model.visual)(images, torch.full_like(logits, -9.0))
    assert none["features"].shape == (2, 0, 32) and none["masks"] == []
    # sigmoid(5) < 0.999: the "whole image" mask is empty at that threshold.
    assert torch.allclose(strict["features"][:, 0], empty["features"][:, 0], atol=1e-6)


def test_clip_is_frozen(clip_model):
    encoder = CLIPBaselineEncoder(clip_model.visual).train()
    assert not encoder.visual.training
    assert not any(p.requires_grad for p in encoder.parameters())
    assert "background" not in encoder.state_dict()


def test_from_config_and_bad_input(clip_model):
    from detectron2.config import get_cfg

    from maskclip_d2.config import add_maskclip_config

    cfg = add_maskclip_config(get_cfg())
    cfg.MODEL.MASKCLIP.MASK_THRESHOLD = 0.25
    encoder = CLIPBaselineEncoder(cfg, clip_model.visual)
    assert encoder.mask_threshold == 0.25
    images, logits = inputs()
    with pytest.raises(ValueError, match=r"\(B=2, M, 32, 32\)"):
        encoder(images, logits[:, :, :16])
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        encoder(images[:, :2], logits)
    with pytest.raises(ValueError, match="chunk_size"):
        CLIPBaselineEncoder(clip_model.visual, chunk_size=0)
