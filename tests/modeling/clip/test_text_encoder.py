"""CLIPTextEncoder: prompt templates, synonyms, cache, cosine / temperature logits, no-object."""
import copy

import clip
import pytest
import torch
import torch.nn.functional as F

from maskclip_d2.modeling import CLIPTextEncoder


def clip_embeddings(model, texts):
    with torch.no_grad():
        return F.normalize(model.encode_text(clip.tokenize(texts)), dim=-1)


def count_text_forwards(encoder):
    calls = []
    encoder.transformer.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_bare_names_are_clips_text_embeddings(clip_model):
    encoder = CLIPTextEncoder(clip_model)
    names = ["cat", "traffic light", "sky"]
    assert torch.allclose(encoder.encode_vocabulary(names), clip_embeddings(clip_model, names), atol=1e-5)


def test_template_ensemble_and_synonyms_are_averaged(clip_model):
    templates = ["a photo of a {}.", "{}", "a blurry photo of the {}."]
    encoder = CLIPTextEncoder(clip_model, prompt_templates=templates, split_synonyms=True)
    text = encoder.encode_vocabulary(["person, man", "dog"])

    def ensemble(words):
        prompts = [t.format(w) for w in words for t in templates]
        return F.normalize(clip_embeddings(clip_model, prompts).mean(0), dim=0)

    person = F.normalize(ensemble(["person"]) + ensemble(["man"]), dim=0)
    assert torch.allclose(text[0], person, atol=1e-5)
    assert torch.allclose(text[1], ensemble(["dog"]), atol=1e-5)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2))
    # The synonym average is the average of its synonyms' own embeddings.
    both = encoder.encode_vocabulary(["person", "man"])
    assert torch.allclose(text[0], F.normalize(both.mean(0), dim=0), atol=1e-5)


def test_by_default_a_name_with_commas_is_one_prompt_as_the_authors_tokenize_it(clip_model):
    # The authors: clip.tokenize(class_names) on the full strings, no template, no splitting.
    encoder = CLIPTextEncoder(clip_model)
    names = ["building, edifice", "sky", "wall-other-merged"]
    assert torch.allclose(encoder.encode_vocabulary(names), clip_embeddings(clip_model, names), atol=1e-5)
    split = CLIPTextEncoder(clip_model, split_synonyms=True).encode_vocabulary(names)
    assert not torch.allclose(split[0], clip_embeddings(clip_model, names)[0], atol=1e-3)
    assert torch.allclose(split[1:], clip_embeddings(clip_model, names[1:]), atol=1e-5)


def test_logits_are_cosine_over_temperature_plus_no_object(clip_model):
    encoder = CLIPTextEncoder(clip_model, temperature=0.05)
    features = torch.randn(2, 4, 32)
    names = ["cat", "dog", "wall"]
    logits = encoder(features, names)
    text = clip_embeddings(clip_model, names)
    expected = F.normalize(features, dim=-1) @ text.T / 0.05
    assert logits.shape == (2, 4, 3) and logits.dtype == torch.float32
    assert torch.allclose(logits, expected, atol=1e-4)

    with_no_object = encoder(features, names, no_object=True)
    assert with_no_object.shape == (2, 4, 4)
    assert torch.allclose(with_no_object[..., :3], logits, atol=1e-5)
    other = clip_embeddings(clip_model, ["other"])[0]
    assert torch.allclose(with_no_object[..., 3], F.normalize(features, dim=-1) @ other / 0.05, atol=1e-4)
    # The score is a constant of the module, not a weight: nothing of it trains.
    assert not any(p.requires_grad for p in encoder.parameters())
    with pytest.raises(ValueError, match="no-object"):
        encoder(features, ["other", "cat"], no_object=True)


def test_repeated_vocabulary_costs_nothing(clip_model):
    clip_model = copy.deepcopy(clip_model)  # its weights get replaced below
    encoder = CLIPTextEncoder(clip_model)
    calls = count_text_forwards(encoder)
    features = torch.randn(1, 3, 32)
    first = encoder(features, ["cat", "dog"])
    assert len(calls) == 1
    second = encoder(features, ["cat", "dog"])
    assert len(calls) == 1 and torch.equal(first, second)
    encoder(features, ["dog", "cat"])  # another vocabulary (order matters for the columns)
    encoder(features, ["cat", "dog"], no_object=True)
    assert len(calls) == 3

    # Other templates: another entry. A state dict loaded into the tower: all entries go.
    ensemble = CLIPTextEncoder(clip_model, prompt_templates=["a {}"])
    ensemble_calls = count_text_forwards(ensemble)
    ensemble(features, ["cat", "dog"])
    assert len(ensemble_calls) == 1 and len(calls) == 4  # the same tower counted twice
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    state["text_projection"] = torch.randn_like(state["text_projection"])
    encoder.load_state_dict(state)
    changed = encoder(features, ["cat", "dog"])
    assert len(calls) == 5 and not torch.allclose(changed, first)


def test_bad_vocabulary_is_refused_with_a_reason(clip_model):
    encoder = CLIPTextEncoder(clip_model)
    features = torch.randn(1, 2, 32)
    with pytest.raises(ValueError, match="empty"):
        encoder(features, [])
    with pytest.raises(ValueError, match=r"\['cat'\] more than once"):
        encoder(features, ["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="bad class name"):
        encoder(features, ["cat", ""])
    with pytest.raises(ValueError, match="bad class name"):
        encoder(features, ["cat, "])
    with pytest.raises(ValueError, match="list of names"):
        encoder(features, "cat")
    with pytest.raises(ValueError, match="exactly once"):
        CLIPTextEncoder(clip_model, prompt_templates=["a photo"])
    with pytest.raises(ValueError, match="temperature"):
        CLIPTextEncoder(clip_model, temperature=0)


def test_holds_only_the_frozen_text_tower(clip_model):
    encoder = CLIPTextEncoder(clip_model).train()
    assert not encoder.training and not encoder.transformer.training
    assert not any(k.startswith("visual") for k in encoder.state_dict())
    assert encoder.transformer is clip_model.transformer  # used in place, not copied


def test_from_config(clip_model):
    from detectron2.config import get_cfg

    from maskclip_d2.config import add_maskclip_config

    cfg = add_maskclip_config(get_cfg())
    encoder = CLIPTextEncoder(cfg, clip_model)
    assert encoder.prompt_templates == ("{}",) and encoder.temperature == 0.01
    cfg.MODEL.MASKCLIP.PROMPT_TEMPLATES = ["a photo of a {}.", "{}"]
    cfg.MODEL.MASKCLIP.TEMPERATURE = 0.02
    encoder = CLIPTextEncoder(cfg, clip_model)
    assert encoder.prompt_templates == ("a photo of a {}.", "{}") and encoder.temperature == 0.02


def test_set_class_embeddings_replaces_the_tower_for_those_names(clip_model):
    clip_model = copy.deepcopy(clip_model)  # its weights get replaced below
    encoder = CLIPTextEncoder(clip_model)
    calls = count_text_forwards(encoder)
    features = torch.randn(2, 32)
    before = encoder(features, ["cat", "dog"])
    custom = torch.randn(2, 32) * 3
    encoder.set_class_embeddings(["cat", "dog"], custom)
    # Given embeddings (normalised) for both names: no tower pass, the logits change.
    text = encoder.encode_vocabulary(["dog", "cat"])
    assert len(calls) == 1
    assert torch.allclose(text, F.normalize(custom, dim=-1)[[1, 0]])
    logits = encoder(features, ["cat", "dog"])
    assert torch.allclose(logits, F.normalize(features, dim=-1) @ F.normalize(custom, dim=-1).T / 0.01,
                          atol=1e-4)
    assert not torch.allclose(logits, before)
    # A vocabulary mixing given and tower names: only the others go through the tower.
    mixed = encoder(features, ["cat", "bird"], no_object=True)
    text = torch.cat([F.normalize(custom[:1], dim=-1), clip_embeddings(clip_model, ["bird", "other"])])
    assert torch.allclose(mixed, F.normalize(features, dim=-1) @ text.T / 0.01, atol=1e-3)
    # Kept across a state-dict load (they are not the tower's); dropped by clear_class_embeddings.
    encoder.load_state_dict({k: v.clone() for k, v in encoder.state_dict().items()})
    assert torch.allclose(encoder.encode_vocabulary(["cat"]), F.normalize(custom[:1], dim=-1))
    encoder.clear_class_embeddings()
    assert torch.allclose(encoder.encode_vocabulary(["cat", "dog"]),
                          clip_embeddings(clip_model, ["cat", "dog"]), atol=1e-5)


def test_set_class_embeddings_checks_shapes_and_values(clip_model):
    encoder = CLIPTextEncoder(clip_model)
    with pytest.raises(ValueError, match=r"\(2, 32\)"):
        encoder.set_class_embeddings(["cat", "dog"], torch.randn(2, 16))
    with pytest.raises(ValueError, match="non-zero"):
        encoder.set_class_embeddings(["cat"], torch.zeros(1, 32))
    with pytest.raises(ValueError, match="more than once"):
        encoder.set_class_embeddings(["cat", "cat"], torch.randn(2, 32))


def test_names_longer_than_clips_context_are_cut_with_a_warning(clip_model, caplog):
    encoder = CLIPTextEncoder(clip_model)
    long_name = " ".join(["very"] * 80) + " large dog"
    short = ["cat", "sky"]
    with caplog.at_level("WARNING", logger="maskclip_d2.modeling.clip.text_encoder"):
        encoder.encode_vocabulary(short)
        assert not caplog.records  # names that fit say nothing
        text = encoder.encode_vocabulary(short + [long_name])
    (record,) = caplog.records
    assert "exceed CLIP's context of 77 tokens" in record.getMessage()
    assert long_name in record.getMessage()
    # Encoded as CLIP cuts it: the first 75 tokens between start and end of text.
    cut = clip.tokenize([long_name], truncate=True)
    assert torch.allclose(text[2], F.normalize(clip_model.encode_text(cut), dim=-1)[0], atol=1e-5)


# ---- where the text tower lives ---------------------------------------------------------------
def tower_tensors(encoder):
    return list(encoder.parameters())


def test_a_pinned_tower_keeps_its_device_takes_the_dtype_and_its_embeddings(clip_model):
    encoder = CLIPTextEncoder(copy.deepcopy(clip_model), tower_device="cpu")
    names = ["cat", "sky"]
    before = encoder.encode_vocabulary(names)
    # Moving the module elsewhere ("meta" stands for CUDA on a CPU-only machine) leaves the
    # tower where it lives, and the cached embeddings valid.
    holder = torch.nn.ModuleDict({"text": encoder, "other": torch.nn.Linear(2, 2)}).to("meta")
    assert holder["other"].weight.is_meta
    assert all(t.device.type == "cpu" for t in tower_tensors(encoder))
    assert torch.equal(encoder.encode_vocabulary(names), before)
    # A dtype change reaches the tower and empties the cache.
    encoder.double()
    assert all(t.dtype == torch.float64 and t.device.type == "cpu" for t in tower_tensors(encoder))
    encoder.float()
    calls = count_text_forwards(encoder)
    assert torch.equal(encoder.encode_vocabulary(names), before) and calls


def test_a_released_tower_keeps_the_embeddings_and_is_rebuilt_for_a_new_vocabulary(clip_model):
    reference = CLIPTextEncoder(clip_model)
    loads = []

    def loader():
        loads.append(1)
        return copy.deepcopy(clip_model)

    encoder = CLIPTextEncoder(copy.deepcopy(clip_model), tower_loader=loader)
    fixed, new = ["cat", "traffic light"], ["dog", "sky"]
    features = torch.randn(2, 3, clip_model.text_projection.shape[1])
    expected = reference(features, fixed, no_object=True)
    assert torch.equal(encoder(features, fixed, no_object=True), expected)
    encoder.release_tower()
    assert encoder.tower_released and all(t.is_meta for t in tower_tensors(encoder))
    # The fixed vocabulary (and no-object) comes from the cache: same logits, no rebuild.
    assert torch.equal(encoder(features, fixed, no_object=True), expected) and not loads
    # A new vocabulary rebuilds the tower once, with the same weights.
    assert torch.equal(encoder.encode_vocabulary(new), reference.encode_vocabulary(new))
    assert loads == [1] and not encoder.tower_released
    assert not any(t.is_meta for t in tower_tensors(encoder))


def test_a_released_tower_that_cannot_be_rebuilt_says_what_to_do(clip_model):
    encoder = CLIPTextEncoder(copy.deepcopy(clip_model))
    encoder.encode_vocabulary(["cat"])
    encoder.release_tower()
    assert torch.equal(encoder.encode_vocabulary(["cat"]), CLIPTextEncoder(clip_model).encode_vocabulary(["cat"]))
    with pytest.raises(RuntimeError, match="RELEASE_TEXT_TOWER False"):
        encoder.encode_vocabulary(["dog"])


def test_loading_weights_into_a_released_tower_rebuilds_it_first(clip_model):
    other = copy.deepcopy(clip_model)
    with torch.no_grad():
        other.text_projection.mul_(-1)
    encoder = CLIPTextEncoder(copy.deepcopy(clip_model), tower_loader=lambda: copy.deepcopy(clip_model))
    encoder.encode_vocabulary(["cat"])
    encoder.release_tower()
    encoder.load_state_dict(CLIPTextEncoder(other).state_dict())
    assert torch.equal(encoder.encode_vocabulary(["cat"]), CLIPTextEncoder(other).encode_vocabulary(["cat"]))
