"""Build and load OpenCLIP models (``open_clip``) for MaskCLIP: ``MODEL.CLIP.NAME "openclip:<arch>"``.

``<arch>`` is one of OpenCLIP's built-in architectures (``open_clip.list_models()``, e.g.
"ViT-B-16", "ViT-L-14", "ViT-H-14-378-quickgelu", "ViT-bigG-14") or ``local-dir:<folder>``, a
folder holding an ``open_clip_config.json`` (OpenCLIP's own format, as in its Hugging Face
repositories) and, optionally, the weights. The weights (``MODEL.CLIP.WEIGHTS``) are:

* "random": the architecture with OpenCLIP's random initialisation (tests and smoke runs);
* a pretrained tag of the architecture (``open_clip.list_pretrained_tags_by_model(arch)``,
  e.g. "laion2b_s34b_b88k"): its file is looked up in the local caches only, where OpenCLIP
  itself would have put it (the Hugging Face hub cache for hub-hosted weights, ``~/.cache/clip``
  for URL-hosted ones; both replaced by ``cache_dir`` / ``$MASKCLIP_CLIP_CACHE`` when given),
  and downloaded there by OpenCLIP only when downloads are allowed, exactly like OpenAI's files
  (see ``openai_loader``);
* a file: a ``.safetensors`` file, or a state dict saved with ``torch.save`` (read with
  ``weights_only=True``) or an OpenAI TorchScript archive;
* "" for ``local-dir:``: the weights file in that folder.

Only class-token ViTs with a standard CLIP text tower are accepted; the others are refused
before anything is built, with the reason (see ``check_openclip_config``).
"""
import logging
import os
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from .towers import vit_layout
from .weights import CACHE_ENV, DEFAULT_CACHE_DIR, NON_WEIGHT_KEYS, download_refusal, read_state_dict

__all__ = ["OPENCLIP_PREFIX", "build_openclip_model", "build_openclip_tokenizer", "check_openclip_config"]

logger = logging.getLogger(__name__)

OPENCLIP_PREFIX = "openclip:"
_LOCAL_DIR = "local-dir:"
# The vision_cfg keys of OpenCLIP's custom attention blocks (CustomResidualAttentionBlock).
_CUSTOM_BLOCK_KEYS = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc")


def _open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "MODEL.CLIP.NAME 'openclip:...' needs OpenCLIP: pip install open_clip_torch==3.3.0 "
            "(the version pinned in requirements.txt)"
        ) from err
    return open_clip


def _model_config(arch: str) -> Dict[str, Any]:
    """OpenCLIP's model config of ``arch`` (built-in name or local-dir:<folder>), read offline."""
    open_clip = _open_clip()
    if arch.startswith("hf-hub:"):
        raise ValueError(
            f"OpenCLIP model {arch!r}: 'hf-hub:' names are read from the network; download the "
            f"repository and name its folder as 'openclip:local-dir:<folder>'"
        )
    if arch.startswith(_LOCAL_DIR):
        folder = arch[len(_LOCAL_DIR):]
        path = os.path.join(folder, "open_clip_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"OpenCLIP model {arch!r}: {path} not found (a local-dir: model is a folder with "
                f"OpenCLIP's open_clip_config.json and, optionally, its weights)"
            )
        return open_clip.get_model_config(arch)
    config = open_clip.get_model_config(arch)
    if config is None:
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        raise ValueError(
            f"Unknown OpenCLIP architecture {arch!r}; OpenCLIP's ViTs: {', '.join(vits)} "
            f"(or 'local-dir:<folder>')"
        )
    return config


def check_openclip_config(arch: str, config: Dict[str, Any]) -> None:
    """Refuses, with the reason, an OpenCLIP model MaskCLIP cannot run on, from its config
    alone (before anything is built): image towers that do not pool through a class token,
    custom attention blocks, and text towers other than CLIP's own transformer."""
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})

    def refuse(reason):
        raise ValueError(f"OpenCLIP model {arch!r} cannot be used by MaskCLIP: {reason}")

    if vision.get("timm_model_name"):
        refuse(
            f"its image tower is the timm model {vision['timm_model_name']!r} (EVA, PE, SigLIP "
            f"and ConvNeXt towers are timm models), which pools with its own head, not through a "
            f"CLIP class token that mask class tokens could copy"
        )
    if isinstance(vision.get("layers"), (list, tuple)):
        refuse("its image tower is a ResNet, which has no class token to copy")
    if vision.get("attentional_pool") or "multimodal_cfg" in config:
        refuse(
            "its image tower pools with attention (attentional_pool, as SigLIP and CoCa do): the "
            "image embedding comes from learned queries, not from a class token"
        )
    if vision.get("global_average_pool") or vision.get("pool_type", "tok") != "tok":
        pooling = (
            "global average pooling (global_average_pool)" if vision.get("global_average_pool")
            else f"pool_type {vision.get('pool_type')!r}"
        )
        refuse(
            f"its image tower pools by {pooling}, so its image embedding is not its class "
            f"token, which mask class tokens copy; only pool_type 'tok' works"
        )
    custom = [k for k in _CUSTOM_BLOCK_KEYS if vision.get(k)]
    if custom or vision.get("block_type") == "custom":
        refuse(
            f"its image tower uses OpenCLIP's custom attention blocks ({', '.join(custom) or 'block_type custom'}), "
            f"whose attention differs from the CLIP attention MaskCLIP reproduces"
        )
    if text.get("hf_model_name") or config.get("custom_text"):
        refuse(
            f"its text tower is a custom one ({text.get('hf_model_name') or 'custom_text'}), not "
            f"CLIP's text transformer"
        )
    if text.get("hf_tokenizer_name") or "siglip" in arch.lower():
        refuse("its tokenizer is a Hugging Face / SigLIP tokenizer, read from the network")
    if text.get("pool_type", "argmax") != "argmax" or text.get("embed_cls"):
        refuse(
            f"its text tower pools with {text.get('pool_type')!r} instead of CLIP's end-of-text "
            f"token (argmax)"
        )
    if text.get("proj_type", "linear") != "linear" or text.get("proj_bias"):
        refuse("its text projection is not CLIP's plain matrix (proj_type / proj_bias)")


def build_openclip_model(
    arch: str,
    weights: str = "",
    cache_dir: Optional[str] = None,
    download: Optional[bool] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Builds the OpenCLIP model ``arch`` with ``weights`` (see the module docstring).

    Returns:
        an ``open_clip.CLIP`` in float32 and eval mode: ``visual`` a class-token ViT,
        ``encode_text`` over tokens of ``build_openclip_tokenizer(arch)``.

    Raises:
        ValueError: the model is refused (with the reason) or the weights do not fit it.
        FileNotFoundError: the weights are neither a file nor cached (and may not be downloaded).
    """
    open_clip = _open_clip()
    config = _model_config(arch)
    check_openclip_config(arch, config)
    path = _weights_file(arch, config, weights, cache_dir, download)

    if path is None:
        logger.warning(
            f"OpenCLIP {arch} has RANDOM weights: no pretrained CLIP is loaded, so features, "
            f"predictions and scores are meaningless. Use this only for tests and smoke runs."
        )
    model = open_clip.create_model(arch, pretrained=None, load_weights=False)
    if not isinstance(model, open_clip.CLIP):
        raise ValueError(f"OpenCLIP model {arch!r} is a {type(model).__name__}, not a CLIP")
    vit_layout(model.visual)  # a second line of defence: refuses what the config check missed
    if path is not None:
        _load_weights(model, path)
    pretrained = open_clip.get_pretrained_cfg(arch, weights) if weights not in ("", "random") else {}
    if pretrained.get("mean"):  # the tag's normalisation, as OpenCLIP's factory records it
        preprocess = dict(model.visual.preprocess_cfg, mean=pretrained["mean"], std=pretrained["std"])
        open_clip.model.set_model_preprocess_cfg(model, preprocess)
    return model.float().eval().to(device)


def build_openclip_tokenizer(arch: str) -> Callable:
    """The tokenizer of ``arch``, ``(texts, context_length=None) -> (T, context_length)``
    token ids (OpenCLIP's SimpleTokenizer with the model's context length and cleaning)."""
    open_clip = _open_clip()
    check_openclip_config(arch, _model_config(arch))
    return open_clip.get_tokenizer(arch)


def _weights_file(arch, config, weights, cache_dir, download) -> Optional[str]:
    """The file to load, or None for random weights."""
    if weights == "random":
        return None
    if weights and os.path.isfile(weights):
        return weights
    if arch.startswith(_LOCAL_DIR):
        if weights:
            raise FileNotFoundError(f"OpenCLIP weights file {weights!r} not found")
        from open_clip.factory import _find_checkpoint_in_dir
        from pathlib import Path

        found = _find_checkpoint_in_dir(Path(arch[len(_LOCAL_DIR):]))
        if found is None:
            raise FileNotFoundError(
                f"OpenCLIP model {arch!r}: no weights file (.safetensors, .bin, .pth) in the folder; "
                f"put one there, or set MODEL.CLIP.WEIGHTS to a file or to 'random'"
            )
        return found
    open_clip = _open_clip()
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not weights:
        raise ValueError(
            f"OpenCLIP model {arch!r} needs MODEL.CLIP.WEIGHTS: a pretrained tag "
            f"({', '.join(tags) or 'none known'}), a weights file, or 'random'"
        )
    pretrained = open_clip.get_pretrained_cfg(arch, weights)
    if not pretrained:
        raise FileNotFoundError(
            f"OpenCLIP weights {weights!r} for {arch!r} not found: neither an existing file nor "
            f"a pretrained tag of {arch} ({', '.join(tags) or 'none known'})"
        )
    if bool(pretrained.get("quick_gelu", False)) != bool(config.get("quick_gelu", False)):
        raise ValueError(
            f"OpenCLIP tag {weights!r} was trained with quick_gelu={pretrained.get('quick_gelu', False)} "
            f"but architecture {arch!r} has quick_gelu={config.get('quick_gelu', False)}: use "
            f"'{arch[:-len('-quickgelu')] if arch.endswith('-quickgelu') else arch + '-quickgelu'}'"
        )
    return _pretrained_file(arch, weights, pretrained, cache_dir, download)


def _pretrained_file(arch, tag, pretrained, cache_dir, download) -> str:
    """The cached file of a pretrained tag; downloaded by OpenCLIP only when allowed."""

    open_clip = _open_clip()
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cache_dir = cache_dir or os.environ.get(CACHE_ENV) or None
    cache_dir = os.path.expanduser(cache_dir) if cache_dir else None
    places = []
    hub = pretrained.get("hf_hub", "")
    if hub:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if not filename else [filename]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=cache_dir)  # never the network
            if isinstance(found, str) and os.path.isfile(found):
                return found
        places.append(
            f"the Hugging Face cache {cache_dir or constants.HF_HUB_CACHE} (repository {repo}, "
            f"file {' or '.join(names)})"
        )
    url = pretrained.get("url", "")
    if url:
        folder = cache_dir or os.path.expanduser(DEFAULT_CACHE_DIR)
        path = os.path.join(folder, os.path.basename(url))
        if os.path.isfile(path):
            return path
        places.append(f"{path}")

    refusal = download_refusal(download)
    where = f"OpenCLIP weights {arch} {tag!r} not found in {' or '.join(places)}"
    if refusal:
        raise FileNotFoundError(
            f"{where}: place the file there (or set {CACHE_ENV}), set MODEL.CLIP.WEIGHTS to the "
            f"file, or {refusal}"
        )
    logger.info(f"Downloading OpenCLIP weights {arch} {tag}")
    try:
        return open_clip.download_pretrained(pretrained, cache_dir=cache_dir)
    except Exception as err:  # hub and URL downloads raise many kinds
        raise FileNotFoundError(f"{where}; downloading them failed: {err}") from err


def _load_weights(model: nn.Module, path: str) -> None:
    """Loads a checkpoint into an OpenCLIP model, as OpenCLIP's ``load_checkpoint`` would
    (``module.`` prefixes dropped, positional embeddings resized to the model's grid), but
    reading it as untrusted input (``weights_only``, TorchScript's restricted unpickler)."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed


    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state_dict = load_file(path, device="cpu")
    else:
        state_dict = read_state_dict(path)
    state_dict = {
        (k[len("module."):] if k.startswith("module.") else k): v
        for k, v in state_dict.items() if k not in NON_WEIGHT_KEYS
    }
    try:
        resize_pos_embed(state_dict, model)
        resize_text_pos_embed(state_dict, model)
        model.load_state_dict(state_dict, strict=True)
    except (KeyError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} does not hold the weights of this OpenCLIP model: {err}") from err
