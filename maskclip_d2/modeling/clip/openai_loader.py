"""Build and load OpenAI CLIP models (``clip.model.CLIP``) for MaskCLIP; names starting with
"openclip:" go to OpenCLIP (``openclip_loader``); where weights files live and how they are
read is ``weights``.

Three ways to get a CLIP:

* ``build_clip_model(name, weights="random")``: the named architecture with random weights
  (tests and demos; the results mean nothing);
* ``build_clip_model(name)`` / ``load_clip(name)``: OpenAI's released weights for ``name``,
  read from the cache folder (``~/.cache/clip`` unless told otherwise) and downloaded there
  when missing and allowed;
* ``build_clip_model(name, weights=path)`` / ``load_clip(path)``: a checkpoint file, either an
  official TorchScript archive or a plain state dict saved with ``torch.save``.

Every model returned is a ``clip.model.CLIP`` (an ``open_clip.CLIP`` for "openclip:" names) in
float32 and eval mode; ``build_clip_tokenizer(name)`` gives the tokenizer its text tower reads.
"""
import dataclasses
import functools
import logging
import os
from typing import Callable, Dict, Optional, Union

import clip
import torch
from clip.model import CLIP, VisionTransformer

from .openclip_loader import OPENCLIP_PREFIX, build_openclip_model, build_openclip_tokenizer
from .weights import (
    CACHE_ENV,
    DEFAULT_CACHE_DIR,
    NON_WEIGHT_KEYS,
    download_refusal,
    read_state_dict,
)

__all__ = [
    "CLIPArchitecture", "CLIP_ARCHITECTURES", "CUSTOM", "build_clip_model", "build_clip_tokenizer",
    "clip_architecture_from_cfg", "load_clip",
]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class CLIPArchitecture:
    """The hyper-parameters of a ViT CLIP, named as ``clip.model.CLIP.__init__`` names them.

    The vision tower has ``vision_width // 64`` heads (fixed by ``clip.model.CLIP``), and
    ``clip.model.build_model`` assumes ``transformer_width // 64`` text heads, so both widths
    are multiples of 64 and ``transformer_heads == transformer_width // 64``.
    """

    embed_dim: int  # width of the joint image-text embedding space
    image_resolution: int  # input side in pixels; (image_resolution // vision_patch_size)**2 patches
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int  # tokens per text
    vocab_size: int  # 49408 for OpenAI's BPE tokenizer (clip.tokenize)
    transformer_width: int  # text transformer
    transformer_heads: int
    transformer_layers: int

    def build(self) -> CLIP:
        """A ``clip.model.CLIP`` of this architecture with CLIP's own random initialisation."""
        return CLIP(**dataclasses.asdict(self))

    def check(self) -> "CLIPArchitecture":
        """Raises ValueError when ``clip.model.CLIP`` cannot build this architecture as stated;
        returns it."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"CLIP architecture: {field.name} must be a positive integer, got {value!r}")
        if self.vision_width % 64:
            raise ValueError(
                f"CLIP architecture: vision_width {self.vision_width} is not a multiple of 64; "
                f"clip.model.CLIP gives the vision tower vision_width // 64 heads of width 64"
            )
        if self.transformer_width % self.transformer_heads:
            raise ValueError(
                f"CLIP architecture: transformer_width {self.transformer_width} is not divisible "
                f"by transformer_heads {self.transformer_heads}"
            )
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(
                f"CLIP architecture: image_resolution {self.image_resolution} is not a multiple "
                f"of vision_patch_size {self.vision_patch_size}"
            )
        return self

    @classmethod
    def from_model(cls, model: CLIP) -> "CLIPArchitecture":
        """Reads the architecture of a built ViT CLIP; raises ValueError for a ResNet CLIP."""
        visual = model.visual
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                f"MaskCLIP needs a ViT CLIP, got a CLIP whose image encoder is "
                f"{type(visual).__name__}"
            )
        return cls(
            embed_dim=model.text_projection.shape[1],
            image_resolution=visual.input_resolution,
            vision_layers=visual.transformer.layers,
            vision_width=visual.transformer.width,
            vision_patch_size=visual.conv1.kernel_size[0],
            context_length=model.context_length,
            vocab_size=model.vocab_size,
            transformer_width=model.transformer.width,
            transformer_heads=model.transformer.resblocks[0].attn.num_heads,
            transformer_layers=model.transformer.layers,
        )


# Hyper-parameters of OpenAI's released ViT CLIPs, plus a tiny one for tests and demos.
CLIP_ARCHITECTURES: Dict[str, CLIPArchitecture] = {
    "ViT-B/32": CLIPArchitecture(
        embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
        vision_patch_size=32, context_length=77, vocab_size=49408,
        transformer_width=512, transformer_heads=8, transformer_layers=12,
    ),
    "ViT-B/16": CLIPArchitecture(
        embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
        vision_patch_size=16, context_length=77, vocab_size=49408,
        transformer_width=512, transformer_heads=8, transformer_layers=12,
    ),
    "ViT-L/14": CLIPArchitecture(
        embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
        vision_patch_size=14, context_length=77, vocab_size=49408,
        transformer_width=768, transformer_heads=12, transformer_layers=12,
    ),
    "ViT-L/14@336px": CLIPArchitecture(
        embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
        vision_patch_size=14, context_length=77, vocab_size=49408,
        transformer_width=768, transformer_heads=12, transformer_layers=12,
    ),
    # 4x4 patches of 16 pixels; the vocabulary stays OpenAI's so that clip.tokenize works.
    "tiny": CLIPArchitecture(
        embed_dim=64, image_resolution=64, vision_layers=4, vision_width=64,
        vision_patch_size=16, context_length=77, vocab_size=49408,
        transformer_width=64, transformer_heads=1, transformer_layers=2,
    ),
}


# MODEL.CLIP.NAME of a CLIP whose architecture the config states in MODEL.CLIP.ARCHITECTURE.
CUSTOM = "custom"


def clip_architecture_from_cfg(cfg) -> Optional[CLIPArchitecture]:
    """The architecture stated in ``MODEL.CLIP.ARCHITECTURE`` when ``MODEL.CLIP.NAME`` is
    "custom" (checked: ValueError naming the key that is wrong), else None (the named
    architecture is used).

    A state dict holds every weight shape but not the head counts, which
    ``clip.model.build_model`` would guess as width // 64; so a custom CLIP states them:
    ``TRANSFORMER_HEADS`` for the text tower and ``VISION_HEADS``, which must equal
    ``VISION_WIDTH // 64`` because ``clip.model.CLIP`` fixes it so.
    """
    if cfg.MODEL.CLIP.NAME != CUSTOM:
        return None
    arch = cfg.MODEL.CLIP.ARCHITECTURE
    fields = [f.name for f in dataclasses.fields(CLIPArchitecture)]
    architecture = CLIPArchitecture(**{f: arch[f.upper()] for f in fields})
    try:
        architecture.check()
    except ValueError as err:
        raise ValueError(f"MODEL.CLIP.NAME is 'custom': MODEL.CLIP.ARCHITECTURE is invalid: {err}") from err
    if arch.VISION_HEADS != architecture.vision_width // 64:
        raise ValueError(
            f"MODEL.CLIP.ARCHITECTURE.VISION_HEADS is {arch.VISION_HEADS}, but clip.model.CLIP "
            f"gives a {architecture.vision_width}-wide vision tower "
            f"{architecture.vision_width // 64} heads (width // 64): set VISION_HEADS to that"
        )
    return architecture


def official_file_name(name: str) -> str:
    """The file OpenAI publishes for ``name``, e.g. "ViT-L/14@336px" -> "ViT-L-14-336px.pt"."""
    return os.path.basename(clip.clip._MODELS[name])


def build_clip_model(
    name: str,
    weights: str = "",
    cache_dir: Optional[str] = None,
    download: Optional[bool] = None,
    device: Union[str, torch.device] = "cpu",
    architecture: Optional[CLIPArchitecture] = None,
) -> CLIP:
    """Builds the CLIP called ``name`` (a key of ``CLIP_ARCHITECTURES``, "custom", or
    "openclip:<arch>").

    Args:
        name: "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px", "tiny"; "custom" with
            ``architecture`` given (``clip_architecture_from_cfg``): the weights file is then
            loaded strictly into that architecture, every shape checked, nothing guessed; or
            "openclip:<arch>" for an OpenCLIP model, whose ``weights`` are "random", a
            pretrained tag or a file (see ``openclip_loader.build_openclip_model``).
        weights: "" for OpenAI's released weights of ``name`` (see ``load_clip``), "random"
            for CLIP's random initialisation, otherwise the path of a checkpoint file.
        cache_dir, download: see ``load_clip``; only used when ``weights`` is "".
        device: where the model goes.

    Returns:
        a ``clip.model.CLIP`` in float32 and eval mode. ``encode_image`` maps images
        (N, 3, R, R), R = ``image_resolution``, to (N, embed_dim); ``encode_text`` maps tokens
        (M, context_length) from ``clip.tokenize`` to (M, embed_dim).
    """
    if name == CUSTOM:
        return _build_custom(architecture, weights).to(device)
    if name.startswith(OPENCLIP_PREFIX):
        return build_openclip_model(
            name[len(OPENCLIP_PREFIX):], weights, cache_dir=cache_dir, download=download, device=device
        )
    if name not in CLIP_ARCHITECTURES:
        raise ValueError(
            f"Unknown CLIP model {name!r}; known models: {', '.join(CLIP_ARCHITECTURES)}, or "
            f"'{OPENCLIP_PREFIX}<arch>' for OpenCLIP's"
        )
    architecture = CLIP_ARCHITECTURES[name]

    if weights == "random":
        logger.warning(
            f"CLIP {name} has RANDOM weights: no pretrained CLIP is loaded, so features, "
            f"predictions and scores are meaningless. Use this only for tests and smoke runs."
        )
        model = architecture.build()
    elif weights == "":
        if name not in clip.clip._MODELS:
            raise ValueError(
                f"CLIP {name!r} has no official weights: set weights to 'random' or to a "
                f"checkpoint file"
            )
        model = load_clip(name, cache_dir=cache_dir, download=download)
    else:
        model = load_clip(weights)

    try:
        loaded = CLIPArchitecture.from_model(model)
    except ValueError as err:
        raise ValueError(f"CLIP weights {weights or name!r}: {err}") from err
    if loaded != architecture:
        logger.warning(
            f"The CLIP weights {weights or name!r} do not have the architecture of {name}: "
            f"expected {architecture}, loaded {loaded}. Using the loaded architecture."
        )
    return model.float().eval().to(device)


def _build_custom(architecture: Optional[CLIPArchitecture], weights: str) -> CLIP:
    """A CLIP of the stated ``architecture``, random or with the weights of file ``weights``."""
    if architecture is None:
        raise ValueError("CLIP name 'custom' needs its architecture (MODEL.CLIP.ARCHITECTURE)")
    model = architecture.check().build().float()
    if weights == "random":
        logger.warning(f"the custom CLIP {architecture} has RANDOM weights: its predictions are meaningless")
        return model.eval()
    if not weights:
        raise ValueError(
            "a custom CLIP (MODEL.CLIP.NAME 'custom') has no official weights: set "
            "MODEL.CLIP.WEIGHTS to its state-dict file (or 'random')"
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"CLIP weights {weights!r} not found (MODEL.CLIP.WEIGHTS)")
    state_dict = {k: v for k, v in read_state_dict(weights).items() if k not in NON_WEIGHT_KEYS}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:
        raise ValueError(
            f"the CLIP weights in {weights} do not fit the architecture stated in "
            f"MODEL.CLIP.ARCHITECTURE ({architecture}): {err}"
        ) from err
    return model.eval()


def build_clip_tokenizer(name: str) -> Callable:
    """The tokenizer of the CLIP called ``name`` (as for ``build_clip_model``):
    ``(texts, context_length) -> (T, context_length)`` token ids, long texts truncated to the
    context length with their end-of-text token kept. OpenAI's models: ``clip.tokenize``;
    OpenCLIP's: the model's own tokenizer (``open_clip.get_tokenizer``)."""
    if name.startswith(OPENCLIP_PREFIX):
        return build_openclip_tokenizer(name[len(OPENCLIP_PREFIX):])
    return functools.partial(clip.tokenize, truncate=True)


def load_clip(
    name_or_path: str,
    cache_dir: Optional[str] = None,
    download: Optional[bool] = None,
    device: Union[str, torch.device] = "cpu",
) -> CLIP:
    """Loads a CLIP from OpenAI's released weights or from a checkpoint file.

    Args:
        name_or_path: an official name ("ViT-B/32", "ViT-B/16", "ViT-L/14",
            "ViT-L/14@336px"), whose file (e.g. "ViT-L-14-336px.pt") is looked up in
            ``cache_dir``; or the path of a TorchScript archive as OpenAI publishes them, or of
            a state dict saved with ``torch.save`` (possibly wrapped in a dict under a
            "state_dict" or "model" key). The architecture is read from the weights.
        cache_dir: folder of the official files; default: ``$MASKCLIP_CLIP_CACHE``, else
            ``~/.cache/clip`` (where ``clip.load`` keeps them too).
        download: whether an official file missing from ``cache_dir`` may be downloaded;
            None (default): yes, unless ``$MASKCLIP_CLIP_DOWNLOAD`` is 0, false, no or off;
            True / False override that variable. When downloads are off, a missing file
            raises at once, before any network access.
        device: where the model goes.

    Returns:
        a ``clip.model.CLIP`` in float32 and eval mode.

    Raises:
        FileNotFoundError: the file is missing (and may not be downloaded).
        ValueError: the file is not a readable CLIP checkpoint.
    """
    if name_or_path in CLIP_ARCHITECTURES and name_or_path in clip.clip._MODELS:
        path = _official_file(name_or_path, cache_dir, download)
    elif os.path.isfile(name_or_path):
        path = name_or_path
    else:
        official = [name for name in CLIP_ARCHITECTURES if name in clip.clip._MODELS]
        raise FileNotFoundError(
            f"CLIP weights {name_or_path!r} not found: it is neither an existing file nor an "
            f"official CLIP name ({', '.join(official)})"
        )

    state_dict = read_state_dict(path)
    state_dict = {k: v for k, v in state_dict.items() if k not in NON_WEIGHT_KEYS}
    try:
        # build_model reads the architecture from the shapes, casts the model to float16 and
        # loads the weights; loading them again into the float32 model keeps full precision
        # for float32 checkpoints.
        model = clip.model.build_model(dict(state_dict)).float()
        model.load_state_dict(state_dict)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} does not hold the weights of a CLIP model: {err}") from err
    return model.eval().to(device)


def _official_file(name: str, cache_dir: Optional[str], download: Optional[bool]) -> str:
    """Path of the official file of ``name`` in the cache folder, downloaded if missing."""
    cache_dir = os.path.expanduser(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)
    file_name = official_file_name(name)
    path = os.path.join(cache_dir, file_name)
    if os.path.isfile(path):
        return path

    place_it = (
        f"CLIP weights {name!r} not found: place {file_name} in {cache_dir} "
        f"(or set {CACHE_ENV})"
    )
    refusal = download_refusal(download)
    if refusal:
        raise FileNotFoundError(f"{place_it}, or {refusal}")

    url = clip.clip._MODELS[name]
    logger.info(f"Downloading CLIP weights {name} from {url} to {cache_dir}")
    try:
        # clip's own downloader checks the SHA256 written in the URL.
        return clip.clip._download(url, cache_dir)
    except OSError as err:
        raise FileNotFoundError(f"{place_it}; downloading {url} failed: {err}") from err
