"""OpenCLIP as a CLIP source: MODEL.CLIP.NAME "openclip:<arch>", its weights, its tokenizer, and
the models MaskCLIP refuses. Everything offline: tiny OpenCLIP models built by OpenCLIP's own
factory with random weights, and weights files written here."""
import logging
import os
import socket

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from helpers.openclip_models import tiny_config, tiny_openclip, write_local_dir
from maskclip_d2.modeling import (
    CLIPBaselineEncoder,
    CLIPTextEncoder,
    MaskCLIPVisualEncoder,
    build_clip_model,
    build_clip_tokenizer,
)
from maskclip_d2.modeling.clip.towers import vit_layout

TINY_ARCH = "maskclip-test-tiny"  # registered in OpenCLIP's registries by the fixture below
REPO = "maskclip-test/tiny-openclip"


@pytest.fixture
def no_network(monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", fail)
    monkeypatch.setattr(open_clip, "download_pretrained", fail)


@pytest.fixture
def tiny_arch(monkeypatch):
    """A tiny architecture with two pretrained tags, one hosted on the Hugging Face hub and one
    at a URL, as OpenCLIP's own registries describe real ones."""
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, TINY_ARCH, tiny_config())
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, TINY_ARCH, {
        "hubtag": {"hf_hub": f"{REPO}/", "url": ""},
        "urltag": {"url": "https://example.invalid/weights/tiny_urltag.pt", "hf_hub": ""},
        "quicktag": {"hf_hub": f"{REPO}/", "quick_gelu": True},
    })
    return f"openclip:{TINY_ARCH}"


def put_in_hub_cache(cache_dir, repo, filename, state_dict):
    """A file laid out as huggingface_hub caches it (refs/main -> snapshots/<commit>/file)."""
    folder = os.path.join(cache_dir, "models--" + repo.replace("/", "--"))
    commit = "0" * 40
    os.makedirs(os.path.join(folder, "refs"))
    os.makedirs(os.path.join(folder, "snapshots", commit))
    with open(os.path.join(folder, "refs", "main"), "w") as f:
        f.write(commit)
    save_file(state_dict, os.path.join(folder, "snapshots", commit, filename))


def state_dict_of(model):
    return {k: v.contiguous().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, reference):
    expected = reference.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key


# ---- building and loading -----------------------------------------------------------------------


def test_random_local_dir_model(tmp_path, no_network, caplog):
    name = write_local_dir(str(tmp_path / "tiny"), image_size=(48, 64), patch_size=8)
    with caplog.at_level(logging.WARNING):
        model = build_clip_model(name, "random")
    assert "RANDOM weights" in caplog.text
    assert isinstance(model, open_clip.CLIP) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    layout = vit_layout(model.visual)
    assert layout.image_size == (48, 64) and layout.grid_size == (6, 8) and layout.num_heads == 2


def test_real_architecture_vit_b_16(no_network):
    """OpenCLIP's ViT-B-16 as built for its LAION / DataComp / DFN weights (random here):
    OpenAI's ViT-B/16 shapes, GELU; a whole-image mask gives its image embedding."""
    model = build_clip_model("openclip:ViT-B-16", "random")
    assert sum(p.numel() for p in model.parameters()) == 149_620_737  # as OpenAI's ViT-B/16
    layout = vit_layout(model.visual)
    assert (layout.image_size, layout.patch_size, layout.width, layout.num_heads, layout.num_layers) == (
        (224, 224), 16, 768, 12, 12)
    assert list(MaskCLIPVisualEncoder(model.visual).rma_layers) == ["3", "6", "9", "12"]  # L/4
    encoder = MaskCLIPVisualEncoder(model.visual, mode="mask_tokens")
    torch.manual_seed(0)
    images = torch.randn(1, 3, 224, 224)
    masks = torch.full((1, 2, 224, 224), 5.0)
    masks[:, 1, 100:] = -5.0
    with torch.no_grad():
        out = encoder(images, masks)
        expected = model.encode_image(images)
    assert (out["features"][:, 0] - expected).abs().max() < 1e-4
    assert (out["features"][:, 1] - expected).abs().max() > 1e-3
    tokens = build_clip_tokenizer("openclip:ViT-B-16")(["a cat"])
    assert tokens.shape == (1, model.context_length) == (1, 77)


@pytest.mark.parametrize("kind", ["hubtag", "urltag", "file", "wrapped_file", "local_dir"])
def test_weights_from_cache_or_file(tmp_path, monkeypatch, tiny_arch, no_network, kind):
    reference = tiny_openclip(seed=3)
    weights = state_dict_of(reference)
    cache = str(tmp_path / "cache")
    monkeypatch.setenv("MASKCLIP_CLIP_CACHE", cache)
    name, tag = tiny_arch, kind
    if kind == "hubtag":
        put_in_hub_cache(cache, REPO, "open_clip_model.safetensors", weights)
    elif kind == "urltag":
        os.makedirs(cache)
        torch.save(weights, os.path.join(cache, "tiny_urltag.pt"))
    elif kind == "file":
        tag = str(tmp_path / "tiny.safetensors")
        save_file(weights, tag)
    elif kind == "wrapped_file":  # a training checkpoint: DDP's module. prefix, under state_dict
        tag = str(tmp_path / "epoch_1.pt")
        torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}}, tag)
    else:
        name = write_local_dir(str(tmp_path / "dir"))
        save_file(weights, str(tmp_path / "dir" / "open_clip_model.safetensors"))
        tag = ""
    model = build_clip_model(name, tag)
    assert_same_weights(model, reference)


def test_missing_tag_fails_at_once_without_download(tmp_path, monkeypatch, tiny_arch, no_network):
    monkeypatch.setenv("MASKCLIP_CLIP_DOWNLOAD", "0")
    monkeypatch.setenv("MASKCLIP_CLIP_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"hubtag.*Hugging Face cache.*tiny-openclip.*MASKCLIP_CLIP_DOWNLOAD"):
        build_clip_model(tiny_arch, "hubtag")
    with pytest.raises(FileNotFoundError, match="tiny_urltag.pt"):
        build_clip_model(tiny_arch, "urltag")


def test_allowed_download_goes_through_open_clip(tmp_path, monkeypatch, tiny_arch):
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network"))
    reference = tiny_openclip(seed=4)
    calls = []

    def download(pretrained, cache_dir=None, **kwargs):
        calls.append((pretrained["hf_hub"], cache_dir))
        path = str(tmp_path / "downloaded.safetensors")
        save_file(state_dict_of(reference), path)
        return path

    monkeypatch.setattr(open_clip, "download_pretrained", download)
    model = build_clip_model(tiny_arch, "hubtag", cache_dir=str(tmp_path), download=True)
    assert calls == [(f"{REPO}/", str(tmp_path))]
    assert_same_weights(model, reference)


def test_bad_weights_are_refused_with_a_reason(tmp_path, tiny_arch, no_network):
    with pytest.raises(ValueError, match="needs MODEL.CLIP.WEIGHTS.*hubtag, urltag"):
        build_clip_model(tiny_arch, "")
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a pretrained tag"):
        build_clip_model(tiny_arch, "nosuchtag")
    with pytest.raises(ValueError, match=r"quick_gelu=True.*-quickgelu"):
        build_clip_model(tiny_arch, "quicktag")
    other = str(tmp_path / "other.safetensors")
    save_file(state_dict_of(tiny_openclip(width=128)), other)
    with pytest.raises(ValueError, match="does not hold the weights of this OpenCLIP model"):
        build_clip_model(tiny_arch, other)
    with pytest.raises(ValueError, match="Unknown OpenCLIP architecture 'ViT-Q-99'"):
        build_clip_model("openclip:ViT-Q-99", "random")
    with pytest.raises(ValueError, match="hf-hub"):
        build_clip_model("openclip:hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        build_clip_model(f"openclip:local-dir:{tmp_path}", "random")
    empty_dir = write_local_dir(str(tmp_path / "no_weights"))
    with pytest.raises(FileNotFoundError, match="no weights file"):
        build_clip_model(empty_dir, "")


# ---- refused architectures ------------------------------------------------------------------------


@pytest.mark.parametrize("arch, reason", [
    ("ViT-B-16-SigLIP", "timm model"),
    ("EVA02-B-16", "timm model"),
    ("PE-Core-B-16", "timm model"),
    ("coca_ViT-B-32", "pools with attention"),
    ("RN50", "ResNet"),
    ("nllb-clip-base", "text tower is a custom one"),
    ("xlm-roberta-base-ViT-B-32", "text tower is a custom one"),
])
def test_refused_builtin_architectures_name_the_reason(arch, reason, no_network):
    with pytest.raises(ValueError, match=f"cannot be used by MaskCLIP: .*{reason}"):
        build_clip_model(f"openclip:{arch}", "random")


@pytest.mark.parametrize("options, reason", [
    (dict(pool_type="avg"), "pool_type 'avg'"),
    (dict(global_average_pool=True), "global average"),
    (dict(attentional_pool=True), "pools with attention"),
    (dict(qk_norm=True), "custom attention blocks"),
])
def test_refused_configs_and_towers(tmp_path, options, reason, no_network):
    # From the config, before anything is built ...
    name = write_local_dir(str(tmp_path / "m"), **options)
    with pytest.raises(ValueError, match=reason):
        build_clip_model(name, "random")
    # ... and from the tower itself, for towers built elsewhere.
    if "global_average_pool" not in options:  # OpenCLIP 3 no longer reads that old key
        visual = tiny_openclip(**options).visual
        with pytest.raises(ValueError, match=reason.split()[0]):
            MaskCLIPVisualEncoder(visual)
        with pytest.raises(ValueError, match=reason.split()[0]):
            CLIPBaselineEncoder(visual)


# ---- text side and the CLIP Baseline ------------------------------------------------------------


def test_text_encoder_uses_the_models_tokenizer_and_context_length(tmp_path, no_network):
    from maskclip_d2.config import get_maskclip_cfg

    name = write_local_dir(str(tmp_path / "m"), context_length=12)
    model = build_clip_model(name, "random")
    cfg = get_maskclip_cfg(opts=["MODEL.CLIP.NAME", name])
    encoder = CLIPTextEncoder(cfg, model)
    assert encoder.context_length == 12
    names = ["cat", "traffic light", "a very long class name that does not fit in twelve tokens"]
    tokens = open_clip.get_tokenizer(name[len("openclip:"):])(names)
    assert tokens.shape == (3, 12) and tokens[2, -1] == tokens.max()  # truncated, end kept
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tokens), dim=-1)
    assert torch.allclose(encoder.encode_vocabulary(names), expected, atol=1e-5)


def test_clip_baseline_over_an_openclip_tower():
    model = tiny_openclip(image_size=(32, 48), patch_size=8, ls_init_value=0.5)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 48, generator=g)
    logits = torch.randn(2, 3, 32, 48, generator=g) * 3
    logits[:, 0] = 5.0
    encoder = CLIPBaselineEncoder(model.visual, chunk_size=2)
    with torch.no_grad():
        out = encoder(images, logits)
        keep = torch.sigmoid(logits) >= 0.5
        masked = torch.where(keep[:, :, None], images[:, None], encoder.background)
        expected = model.encode_image(masked.flatten(0, 1)).view(2, 3, -1)
    assert torch.allclose(out["features"], expected, atol=1e-5)
    assert torch.allclose(out["features"][:, 0], model.encode_image(images), atol=1e-5)


@pytest.mark.parametrize("config, arch, tag, size, rma_layers", [
    ("maskclip_openclip_vitb16_laion2b.yaml", "ViT-B-16", "laion2b_s34b_b88k", 224, [3, 6, 9, 12]),
    ("maskclip_openclip_vitl14_laion2b.yaml", "ViT-L-14", "laion2b_s32b_b82k", 224, [6, 12, 18, 24]),
    ("maskclip_openclip_vith14_378_dfn.yaml", "ViT-H-14-378-quickgelu", "dfn5b", 378, [8, 16, 24, 32]),
])
def test_openclip_configs_name_accepted_models_with_their_normalisation(config, arch, tag, size, rma_layers):
    """The shipped configs: an accepted architecture, a tag of it with the same QuickGELU
    setting, OpenCLIP's own normalisation for that tag, and the input size and default RMA
    layers the architecture implies (from its config, without building it)."""
    from maskclip_d2.config import get_maskclip_cfg
    from maskclip_d2.modeling.encoder.maskclip_encoder import default_rma_layers
    from maskclip_d2.modeling.clip.openclip_loader import check_openclip_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    cfg = get_maskclip_cfg(os.path.join(root, "configs", "coco", config))
    assert (cfg.MODEL.CLIP.NAME, cfg.MODEL.CLIP.WEIGHTS) == (f"openclip:{arch}", tag)
    model_cfg = open_clip.get_model_config(arch)
    check_openclip_config(arch, model_cfg)
    pretrained = open_clip.get_pretrained_cfg(arch, tag)
    assert pretrained.get("quick_gelu", False) == model_cfg.get("quick_gelu", False)
    assert cfg.MODEL.CLIP.PIXEL_MEAN == pytest.approx([255 * v for v in pretrained["mean"]])
    assert cfg.MODEL.CLIP.PIXEL_STD == pytest.approx([255 * v for v in pretrained["std"]])
    assert model_cfg["vision_cfg"]["image_size"] == size
    assert cfg.MODEL.MASKCLIP.RMA_LAYERS == []  # the default: every L/4-th layer
    assert default_rma_layers(model_cfg["vision_cfg"]["layers"]) == rma_layers


def test_weights_at_a_larger_image_size_resize_the_positional_embedding(tmp_path, no_network):
    """A model configured for 96 x 128 px loads 64 px weights as OpenCLIP does (positional
    embedding interpolated to the 6 x 8 grid); MaskCLIP then runs at that size."""
    reference = tiny_openclip(seed=6)
    path = str(tmp_path / "w64.safetensors")
    save_file(state_dict_of(reference), path)
    name = write_local_dir(str(tmp_path / "big"), image_size=(96, 128))
    model = build_clip_model(name, path)
    assert model.visual.positional_embedding.shape == (1 + 6 * 8, 64)
    assert torch.equal(model.visual.conv1.weight, reference.visual.conv1.weight)
    encoder = MaskCLIPVisualEncoder(model.visual, mode="mask_tokens")
    assert encoder.input_size == (96, 128) and encoder.input_resolution is None
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = encoder(images, torch.full((2, 1, 96, 128), 5.0))
        assert (out["features"][:, 0] - model.encode_image(images)).abs().max() < 1e-4
