import logging
import os
import socket

import clip
import pytest
import torch

from maskclip_d2.modeling import build_clip_model, load_clip
from maskclip_d2.modeling.clip.openai_loader import CLIP_ARCHITECTURES, CLIPArchitecture

# Parameter counts of OpenAI's released models, as clip.load() of the official files reports them.
OFFICIAL_PARAMETER_COUNTS = {
    "ViT-B/32": 151_277_313,
    "ViT-B/16": 149_620_737,
    "ViT-L/14": 427_616_513,
    "ViT-L/14@336px": 427_944_193,
}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return CLIP_ARCHITECTURES["tiny"].build().eval()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 64, 64)


@pytest.fixture
def no_network(monkeypatch):
    """Fails the test if anything tries to download or open a connection."""

    def fail(*args, **kwargs):
        pytest.fail(f"network access attempted: {args}")

    monkeypatch.setattr(clip.clip, "_download", fail)
    monkeypatch.setattr(socket.socket, "connect", fail)


def assert_same_weights(model, reference):
    state, expected = model.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert state[key].dtype == torch.float32, key
        assert torch.equal(state[key], value.float()), key


def test_random_tiny_clip_encodes_images_and_text(caplog):
    with caplog.at_level(logging.WARNING):
        model = build_clip_model("tiny", weights="random")
    assert "RANDOM weights" in caplog.text and "meaningless" in caplog.text
    assert isinstance(model, clip.model.CLIP) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())

    with torch.no_grad():
        image_features = model.encode_image(torch.randn(2, 3, 64, 64))
        text_features = model.encode_text(clip.tokenize(["a photo of a cat", "a dog", "sky"]))
    assert image_features.shape == (2, 64)
    assert text_features.shape == (3, 64)
    # the towers read their input: different images and texts give different features
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()
    assert not torch.allclose(image_features[0], image_features[1])
    assert not torch.allclose(text_features[0], text_features[1])


def test_tiny_architecture_survives_build_model(tiny):
    rebuilt = clip.model.build_model(tiny.state_dict())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in tiny.state_dict().items()
    }
    assert CLIPArchitecture.from_model(rebuilt) == CLIP_ARCHITECTURES["tiny"]


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMETER_COUNTS))
def test_official_architectures_match_released_models(name):
    architecture = CLIP_ARCHITECTURES[name]
    # build_model gives text width // 64 heads: a file saved from this architecture reloads as it.
    assert architecture.transformer_heads == architecture.transformer_width // 64
    assert architecture.vision_width % 64 == 0

    with torch.device("meta"):  # shapes only: no memory, no time
        model = build_clip_model(name, weights="random", device="meta")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETER_COUNTS[name]
    assert CLIPArchitecture.from_model(model) == architecture


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "with_official_extras"])
def test_state_dict_file_round_trip(tmp_path, tiny, images, wrap, no_network):
    state_dict = tiny.state_dict()
    if wrap == "with_official_extras":
        state_dict.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77),
                          vocab_size=torch.tensor(49408))
    elif wrap != "plain":
        state_dict = {wrap: state_dict, "iteration": 7}
    path = tmp_path / "tiny.pth"
    torch.save(state_dict, path)

    loaded = load_clip(str(path))
    assert_same_weights(loaded, tiny)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), tiny.encode_image(images))

    # the same file through build_clip_model
    built = build_clip_model("tiny", weights=str(path))
    assert_same_weights(built, tiny)


def test_float16_state_dict_loads_as_float32(tmp_path, tiny):
    half = {k: v.half() for k, v in tiny.state_dict().items()}  # official weights are float16
    path = tmp_path / "half.pt"
    torch.save(half, path)
    loaded = load_clip(str(path))
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, half[key].float()), key


@pytest.mark.filterwarnings(
    "ignore::torch.jit.TracerWarning", "ignore:`torch.jit.trace", "ignore:`torch.jit.load"
)
def test_torchscript_archive_round_trip(tmp_path, tiny, images, no_network):
    # OpenAI's official files are traced CLIP models saved as TorchScript; build one the same way.
    traced = torch.jit.trace(tiny, (images, clip.tokenize(["a cat", "a dog"])))
    path = tmp_path / "tiny_jit.pt"
    traced.save(str(path))
    assert torch.jit.load(str(path)).state_dict().keys() == tiny.state_dict().keys()

    loaded = load_clip(str(path))
    assert isinstance(loaded, clip.model.CLIP)
    assert_same_weights(loaded, tiny)
    tokens = clip.tokenize(["a photo of a cat"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), tiny.encode_image(images))
        assert torch.equal(loaded.encode_text(tokens), tiny.encode_text(tokens))


@pytest.mark.parametrize(
    "env_value, download", [("0", None), ("false", None), ("No", None), ("OFF", None), (None, False)]
)
def test_missing_official_weights_fail_at_once_without_download(
    tmp_path, monkeypatch, no_network, env_value, download
):
    if env_value is None:
        monkeypatch.delenv("MASKCLIP_CLIP_DOWNLOAD", raising=False)
    else:
        monkeypatch.setenv("MASKCLIP_CLIP_DOWNLOAD", env_value)
    monkeypatch.setenv("MASKCLIP_CLIP_CACHE", str(tmp_path))

    with pytest.raises(FileNotFoundError) as error:
        load_clip("ViT-L/14@336px", download=download)
    message = str(error.value)
    assert "ViT-L-14-336px.pt" in message and str(tmp_path) in message
    assert ("download=True" if download is False else "MASKCLIP_CLIP_DOWNLOAD") in message

    # the default of build_clip_model (official weights) goes the same way
    with pytest.raises(FileNotFoundError, match="ViT-L-14-336px.pt"):
        build_clip_model("ViT-L/14@336px", download=download)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_argument_overrides_environment(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("MASKCLIP_CLIP_CACHE", str(tmp_path / "from_env"))
    with pytest.raises(FileNotFoundError) as error:
        load_clip("ViT-B/32", cache_dir=str(tmp_path / "from_arg"))
    message = str(error.value)
    assert "ViT-B-32.pt" in message and str(tmp_path / "from_arg") in message
    assert "from_env" not in message


@pytest.mark.parametrize("env_value, download", [(None, None), ("0", True)])
def test_allowed_download_goes_through_clip_downloader(
    tmp_path, monkeypatch, tiny, images, env_value, download
):
    if env_value is None:
        monkeypatch.delenv("MASKCLIP_CLIP_DOWNLOAD", raising=False)
    else:
        monkeypatch.setenv("MASKCLIP_CLIP_DOWNLOAD", env_value)
    calls = []

    def fake_download(url, root):  # stands in for clip.clip._download: no network in tests
        calls.append((url, root))
        path = os.path.join(root, os.path.basename(url))
        torch.save(tiny.state_dict(), path)
        return path

    monkeypatch.setattr(clip.clip, "_download", fake_download)
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("network access"))

    loaded = load_clip("ViT-B/16", cache_dir=str(tmp_path), download=download)
    assert calls == [(clip.clip._MODELS["ViT-B/16"], str(tmp_path))]
    assert_same_weights(loaded, tiny)


def test_official_name_found_in_custom_cache(tmp_path, monkeypatch, tiny, images, no_network, caplog):
    monkeypatch.setenv("MASKCLIP_CLIP_CACHE", str(tmp_path))
    # the architecture comes from the file, so a tiny model under an official name loads
    torch.save(tiny.state_dict(), tmp_path / "ViT-B-16.pt")

    loaded = load_clip("ViT-B/16")
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), tiny.encode_image(images))

    with caplog.at_level(logging.WARNING):
        built = build_clip_model("ViT-B/16")
    assert_same_weights(built, tiny)
    assert "do not have the architecture of ViT-B/16" in caplog.text


def test_corrupt_file_names_the_path(tmp_path, tiny):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_clip(str(garbage))

    # an interrupted download: a torch.save zip cut in half
    torch.save(tiny.state_dict(), tmp_path / "full.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "full.pt").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_clip(str(truncated))


def test_state_dict_of_another_model_is_refused(tmp_path):
    path = tmp_path / "linear.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"linear\.pt does not hold the weights of a CLIP"):
        load_clip(str(path))


executed = []


def _record_execution():
    executed.append(True)
    return {}


class _Payload:
    def __reduce__(self):  # unpickling a full pickle would call _record_execution()
        return (_record_execution, ())


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "malicious.pt"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(ValueError, match="malicious.pt"):
        load_clip(str(path))
    assert executed == []


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(ValueError) as error:
        build_clip_model("ViT-H/14", weights="random")
    assert all(name in str(error.value) for name in CLIP_ARCHITECTURES)

    with pytest.raises(FileNotFoundError) as error:
        load_clip("ViT-H/14")
    assert "ViT-L/14@336px" in str(error.value)

    with pytest.raises(ValueError, match="no official weights"):
        build_clip_model("tiny")

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        build_clip_model("tiny", weights=str(tmp_path / "missing.pt"))
