"""Open-vocabulary classification: CLIP text embeddings of class names, and mask logits.

* Prompt templates (``"{}"`` is replaced by the name): the default ``["{}"]`` is the bare
  name, as the authors do; several templates form an ensemble, averaged like CLIP's (mean of
  the L2-normalised prompt embeddings, normalised again).
* A class name is one prompt as it stands, ``"building, edifice"`` included (the authors',
  ``split_synonyms=False``); with ``split_synonyms=True`` it lists synonyms, ``"name1, name2"``:
  each synonym gets its ensemble embedding, and the class embedding is their normalised mean.
* Embeddings are cached per (class names, templates) on this module, so a repeated
  vocabulary costs nothing. The cache belongs to this text tower: it is emptied when a state
  dict is loaded into the module and when the tower's dtype changes.
* Precomputed or custom text embeddings: ``set_class_embeddings(names, embeddings)`` gives
  names their embeddings directly (e.g. from a prompt-engineered run saved to disk, or built
  for a test); those names never go through the text tower until ``clear_class_embeddings``.
* Where the text tower lives. It is needed only to embed vocabularies not seen yet, so it
  can live where it costs least: ``tower_device="cpu"`` keeps it on the CPU whatever device
  the rest of the model is moved to (it visits the image side's device to embed, then goes
  back), and ``release_tower()`` frees its weights once the vocabularies are fixed (e.g. for
  an evaluation), keeping the cached embeddings. A vocabulary not embedded yet then rebuilds
  the tower with ``tower_loader`` (the CLIP weights the config names); without one (random
  CLIP weights) it is an error that says so. Outputs do not change: the embeddings are
  computed on the same device and from the same weights as without these options.
* Logits are cosine similarities divided by a temperature (default 0.01, the authors').
* No-object: for training (CE over the vocabulary + no-object), ``no_object=True`` appends
  one more column, the logit of a no-object class whose text is ``no_object_name``
  (default ``"other"``, as in the authors' code). It adds no weights, so training leaves
  CLIP's image-text space alone and the score exists for any vocabulary.
"""
import functools
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import clip
import torch
import torch.nn.functional as F
from clip.model import CLIP
from torch import nn

from detectron2.config import configurable

from .openai_loader import build_clip_tokenizer
from .towers import text_transformer_forward
from .text_tower_offload import TowerFile

__all__ = ["CLIPTextEncoder", "check_vocabulary", "ensemble_embeddings"]

logger = logging.getLogger(__name__)

# The modules and parameters of CLIP's text tower, as ``clip.model.CLIP`` names them.
TEXT_TOWER = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


class CLIPTextEncoder(nn.Module):
    """CLIP's frozen text tower, turned into a classifier over a vocabulary given at call time.

    Holds only the text modules of the CLIP model (token and positional embeddings, text
    transformer, final LayerNorm and projection), frozen and in eval mode.
    """

    @configurable
    def __init__(
        self,
        clip_model: CLIP,
        *,
        tokenizer: Optional[Callable] = None,
        prompt_templates: Sequence[str] = ("{}",),
        temperature: float = 0.01,
        no_object_name: str = "other",
        split_synonyms: bool = False,
        batch_size: int = 256,
        tower_device: Optional[str] = None,
        tower_loader: Optional[Callable[[], CLIP]] = None,
        offload_tower: bool = False,
    ):
        """
        Args:
            clip_model: a ``clip.model.CLIP`` or an ``open_clip.CLIP``; its text tower is used
                in place, never copied.
            tokenizer: ``(texts, context_length) -> (T, context_length)`` token ids of that
                model (``openai_loader.build_clip_tokenizer``); None = ``clip.tokenize``.
            prompt_templates: templates with one "{}" each, e.g. ["a photo of a {}."].
            temperature: logits = cosine similarity / temperature.
            no_object_name: text of the no-object class appended with ``no_object=True``.
            split_synonyms: False: each class name is one prompt (the authors'); True: "a, b"
                are synonyms whose embeddings are averaged.
            batch_size: prompts per text-tower forward pass.
            tower_device: None: the tower moves with the module (``.to``, ``.cuda``), as any
                module does; a device (e.g. "cpu"): the tower stays there and visits the
                device of the image features only while it embeds a vocabulary.
            tower_loader: returns a CLIP with the same text tower (e.g. reloads the CLIP
                weights the config names); lets ``release_tower`` be undone when a new
                vocabulary comes. None: a released tower cannot be rebuilt.
            offload_tower: after each embedding, a tower living on the CPU is kept in a
                memory-mapped temporary file instead of memory (``text_tower_offload.py``):
                the same weights, resident only while they embed.
        """
        super().__init__()
        self.prompt_templates = tuple(prompt_templates)
        if not self.prompt_templates:
            raise ValueError("prompt_templates is empty: give at least one, e.g. ['{}']")
        for template in self.prompt_templates:
            if not isinstance(template, str) or template.count("{}") != 1:
                raise ValueError(
                    f"prompt template {template!r} must contain '{{}}' exactly once, where the "
                    f"class name goes"
                )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not no_object_name or not no_object_name.strip():
            raise ValueError("no_object_name must be a non-empty text")
        self.temperature = temperature
        self.no_object_name = no_object_name
        self.split_synonyms = split_synonyms
        self.batch_size = batch_size
        self.context_length = clip_model.context_length
        self.tokenizer = tokenizer or functools.partial(clip.tokenize, truncate=True)
        self.tower_device = None if tower_device is None else torch.device(tower_device)
        self.tower_loader = tower_loader
        self.tower_released = False
        self.offload_tower = offload_tower
        self._tower_file: Optional[TowerFile] = None
        self._take_tower(clip_model)

        self._cache: Dict[Tuple, torch.Tensor] = {}
        self._class_embeddings: Dict[str, torch.Tensor] = {}  # set_class_embeddings
        self.register_load_state_dict_pre_hook(self._clear_cache)

    def _take_tower(self, clip_model: CLIP) -> None:
        """Uses ``clip_model``'s text modules (in place), frozen and in eval mode."""
        for name in TEXT_TOWER:
            setattr(self, name, getattr(clip_model, name))
        # OpenCLIP keeps the causal mask on the model (OpenAI's blocks hold their own).
        self.register_buffer("attn_mask", getattr(clip_model, "attn_mask", None), persistent=False)
        self.requires_grad_(False)
        self.eval()
        if self.tower_device is not None:
            self._move_tower(self.tower_device)

    @classmethod
    def from_config(cls, cfg, clip_model, tower_loader=None):
        return {
            "clip_model": clip_model,
            "tokenizer": build_clip_tokenizer(cfg.MODEL.CLIP.NAME),
            "prompt_templates": list(cfg.MODEL.MASKCLIP.PROMPT_TEMPLATES),
            "temperature": cfg.MODEL.MASKCLIP.TEMPERATURE,
            "no_object_name": cfg.MODEL.MASKCLIP.NO_OBJECT_NAME,
            "split_synonyms": cfg.MODEL.MASKCLIP.SPLIT_SYNONYMS,
            "tower_device": cfg.MODEL.CLIP.TEXT_TOWER_DEVICE or None,
            "tower_loader": tower_loader,
            "offload_tower": cfg.MODEL.CLIP.OFFLOAD_TEXT_TOWER,
        }

    # ---- where the tower lives ---------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        """``.to`` / ``.cuda`` / ``.half`` ...: a pinned tower (``tower_device``) keeps its
        device and takes only the dtype (of a float32 tensor under ``fn``); a released tower
        has nothing to convert. A dtype change empties the cache (embeddings of another
        precision)."""
        dtype = fn(torch.empty(0)).dtype
        if dtype != self.text_projection.dtype:
            self._cache.clear()
        if self.tower_released:
            self._released_dtype = dtype
            return self
        if self.tower_device is None:
            return super()._apply(fn, recurse)
        # Only the dtype is taken from fn: the tower never leaves its device, even briefly.
        return super()._apply(
            lambda t: t.to(self.tower_device, dtype if t.is_floating_point() else t.dtype), recurse
        )

    def _move_tower(self, device) -> None:
        nn.Module._apply(self, lambda t: t.to(device))

    @property
    def tower_home(self) -> torch.device:
        """The device the tower lives on between embeddings."""
        return self.text_projection.device

    def release_tower(self) -> None:
        """Frees the text tower's weights (they become shape-only "meta" tensors), keeping
        the cached embeddings: for when every vocabulary to come is embedded already (e.g.
        ``MaskCLIP.fix_vocabularies`` before an evaluation). A vocabulary not in the cache
        rebuilds the tower with ``tower_loader``. Not to be saved in between: a released
        tower's state dict holds no values."""
        if self.tower_released:
            return
        self._released_home = self.tower_home
        self._released_dtype = self.text_projection.dtype
        self._close_tower_file()
        self._move_tower("meta")
        self.tower_released = True

    def _restore_tower(self) -> None:
        if self.tower_loader is None:
            raise RuntimeError(
                "CLIP's text tower was released after embedding the fixed vocabularies "
                "(MODEL.CLIP.RELEASE_TEXT_TOWER) and cannot be rebuilt to embed a new one: its "
                "weights are random (MODEL.CLIP.WEIGHTS 'random') or no tower_loader was given. "
                "Name the CLIP weights, or set MODEL.CLIP.RELEASE_TEXT_TOWER False."
            )
        logger.info("Rebuilding CLIP's released text tower to embed a new vocabulary")
        home, dtype = self._released_home, self._released_dtype
        self.tower_released = False
        self._take_tower(self.tower_loader())
        self._move_tower(home)
        nn.Module._apply(self, lambda t: t.to(dtype) if t.is_floating_point() else t)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: always in inference mode

    def forward(
        self, features: torch.Tensor, class_names: Sequence[str], no_object: bool = False
    ) -> torch.Tensor:
        """
        Args:
            features: (..., E) image-side features in CLIP's joint space, e.g. the (B, M, E)
                mask features of the visual encoder; normalised here.
            class_names: the vocabulary, C distinct names; "a, b" lists synonyms.
            no_object: append the no-object logit as column C (for training).

        Returns:
            (..., C) float32 logits, cosine / temperature; (..., C + 1) with ``no_object``.
        """
        class_names = check_vocabulary(class_names)
        if no_object:
            self.check_no_object(class_names)
        # Cached separately, so the vocabulary's embeddings serve with and without no-object.
        return self.classify(features, self._embeddings(class_names, features.device), no_object)

    def classify(
        self, features: torch.Tensor, class_embeddings: torch.Tensor, no_object: bool = False
    ) -> torch.Tensor:
        """``forward`` with the vocabulary given as text embeddings instead of names (what an
        exported model takes as input; see tools/export_onnx.py).

        Args:
            features: (..., E) image-side features in CLIP's joint space; normalised here.
            class_embeddings: (C, E) text embeddings, e.g. ``encode_vocabulary(names)``;
                normalised here (a no-op for ``encode_vocabulary``'s unit vectors).
            no_object: append the no-object logit as column C.

        Returns:
            (..., C) float32 logits, cosine / temperature; (..., C + 1) with ``no_object``.
        """
        text = F.normalize(class_embeddings.float(), dim=-1)
        if no_object:
            text = torch.cat([text, self._embeddings((self.no_object_name,), text.device).to(text.device)])
        image = F.normalize(features.float(), dim=-1)
        return image @ text.to(image.device).T / self.temperature

    def check_no_object(self, class_names: Sequence[str]) -> None:
        """ValueError if the vocabulary contains the no-object text (its logits would clash)."""
        if self.no_object_name in class_names:
            raise ValueError(
                f"the vocabulary contains the no-object text {self.no_object_name!r}: rename "
                f"that class or choose another no_object_name"
            )

    def encode_vocabulary(self, class_names: Sequence[str], device=None) -> torch.Tensor:
        """(C, E) float32 unit-norm text embeddings of the class names (cached), computed on
        ``device`` (default: where the tower is) if not cached yet."""
        return self._embeddings(check_vocabulary(class_names), device)

    def _embeddings(self, names: Tuple[str, ...], device=None) -> torch.Tensor:
        """``encode_vocabulary`` of names already checked."""
        key = (names, self.prompt_templates, self.split_synonyms)
        if key not in self._cache:
            if self.tower_released and any(n not in self._class_embeddings for n in names):
                self._restore_tower()
            home = self.tower_home
            device = home if device is None else torch.device(device)
            if device != home:  # the tower visits the image side's device, then goes home
                self._move_tower(device)
            try:
                self._cache[key] = self._encode_names(names)
            finally:
                if device != home:
                    self._move_tower(home)
            self._offload()
        return self._cache[key]

    # ---- embed, then offload -------------------------------------------------------------
    def _offload(self) -> None:
        """With ``offload_tower``, a tower at home on the CPU goes to (or back to) its file."""
        if not self.offload_tower or self.tower_released or self.tower_home.type != "cpu":
            return
        if self._tower_file is None or not self._tower_file.matches(self):
            self._close_tower_file()
            self._tower_file = TowerFile(self)
        self._tower_file.remap(self)

    def _close_tower_file(self) -> None:
        if self._tower_file is not None:
            self._tower_file.close()
            self._tower_file = None

    def set_class_embeddings(self, class_names: Sequence[str], embeddings: torch.Tensor) -> None:
        """Use precomputed / custom text embeddings for ``class_names`` from now on.

        The way to classify against embeddings that do not come from this text tower with
        these templates: cached offline, built from other prompts, or constructed in tests.
        Vocabularies may mix such names with ordinary ones. The embeddings are normalised
        here and kept when a state dict is loaded (they are not the tower's).

        Args:
            class_names: C distinct names, as they appear in vocabularies.
            embeddings: (C, E), E the joint embedding width (``text_projection.shape[1]``).
        """
        names = check_vocabulary(class_names)
        width = self.text_projection.shape[1]
        if embeddings.dim() != 2 or tuple(embeddings.shape) != (len(names), width):
            raise ValueError(
                f"embeddings must have shape (C, E) = ({len(names)}, {width}) for {len(names)} "
                f"class names and this CLIP's {width}-wide joint space, got {tuple(embeddings.shape)}"
            )
        if not torch.isfinite(embeddings).all() or (embeddings.norm(dim=-1) == 0).any():
            raise ValueError("embeddings must be finite and non-zero (each row is normalised)")
        unit = F.normalize(embeddings.detach().float().cpu(), dim=-1)
        self._class_embeddings.update(zip(names, unit))
        self._cache.clear()  # vocabularies with these names change

    def clear_class_embeddings(self) -> None:
        """Forget every ``set_class_embeddings``: all names go through the text tower again."""
        self._class_embeddings.clear()
        self._cache.clear()

    def _encode_names(self, names: Tuple[str, ...]) -> torch.Tensor:
        """(C, E): the given embeddings of ``set_class_embeddings`` names, the text tower's
        for the others."""
        device = self.text_projection.device
        encoded = [n for n in names if n not in self._class_embeddings]
        tower = dict(zip(encoded, self._encode_with_tower(tuple(encoded)))) if encoded else {}
        return torch.stack(
            [tower[n] if n in tower else self._class_embeddings[n].to(device) for n in names]
        )

    @torch.no_grad()
    def _encode_with_tower(self, names: Tuple[str, ...]) -> torch.Tensor:
        return ensemble_embeddings(
            names, self.prompt_templates, self.encode_text, self.batch_size, self.split_synonyms
        )

    def encode_text(self, texts: List[str]) -> torch.Tensor:
        """(T, E) float32 unit-norm embeddings of texts: ``clip_model.encode_text`` of
        ``tokenizer(texts)`` (cut to the context length, with a warning naming what is cut),
        normalised."""
        try:  # CLIP's BPE (OpenCLIP's default tokenizer too) refuses over-long texts uncut
            clip.tokenize(texts, context_length=self.context_length)
        except RuntimeError:
            _warn_truncated(texts, self.context_length)
        tokens = self.tokenizer(texts, context_length=self.context_length)
        return F.normalize(self.encode_tokens(tokens.to(self.text_projection.device)).float(), dim=-1)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, E) text embeddings (not normalised) of (T, context_length) token ids."""
        dtype = self.text_projection.dtype
        x = self.token_embedding(tokens).to(dtype) + self.positional_embedding.to(dtype)
        x = text_transformer_forward(self.transformer, x, self.attn_mask)
        x = self.ln_final(x).to(dtype)
        # The end-of-text token has the largest id; its output is the text embedding.
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def _clear_cache(self, *args):
        self._cache.clear()  # the weights are about to change
        self._close_tower_file()  # (loaded in place: the next offload writes them)
        if self.tower_released:
            self._restore_tower()  # something to load them into


def check_vocabulary(class_names: Sequence[str]) -> Tuple[str, ...]:
    """The names as a tuple, or ValueError saying what is wrong: no names, an empty name or
    synonym, or a class listed twice (compared case-insensitively, as CLIP's tokenizer
    lower-cases text). Encodes nothing."""
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of names, got the string {class_names!r}")
    names = tuple(class_names)
    if not names:
        raise ValueError("the vocabulary is empty: give at least one class name")
    for name in names:
        if not isinstance(name, str) or not all(_synonyms(name)):
            raise ValueError(
                f"bad class name {name!r}: expected a non-empty text, synonyms separated by ', '"
            )
    seen, duplicates = set(), []
    for name in names:
        key = ", ".join(_synonyms(name)).lower()
        if key in seen and name not in duplicates:
            duplicates.append(name)
        seen.add(key)
    if duplicates:
        raise ValueError(
            f"the vocabulary lists {duplicates} more than once: class names must be distinct "
            f"(merge synonyms into one entry, 'a, b')"
        )
    return names


def ensemble_embeddings(
    names: Sequence[str],
    templates: Sequence[str],
    encode_text: Callable[[List[str]], torch.Tensor],
    batch_size: int = 256,
    split_synonyms: bool = True,
) -> torch.Tensor:
    """(C, E) unit-norm class embeddings: every synonym of every name in every template goes
    through ``encode_text`` (texts -> (T, E) unit-norm embeddings), ``batch_size`` prompts at a
    time (``split_synonyms`` False: a name is one text, commas included); the templates are
    averaged per synonym (CLIP's ensemble), then the synonyms per name.
    ``CLIPTextEncoder`` uses it with its text tower, ``maskclip_d2.deploy`` with an exported one."""
    split = _synonyms if split_synonyms else (lambda name: [name])
    synonyms = [(i, synonym) for i, name in enumerate(names) for synonym in split(name)]
    prompts = [template.format(synonym) for _, synonym in synonyms for template in templates]
    embeddings = torch.cat(
        [encode_text(prompts[s:s + batch_size]) for s in range(0, len(prompts), batch_size)]
    )
    # Template ensemble per synonym, then the mean of the synonyms per name; normalising
    # a sum of unit vectors is normalising their mean.
    device = embeddings.device
    per_synonym = torch.arange(len(synonyms), device=device).repeat_interleave(len(templates))
    per_name = torch.tensor([i for i, _ in synonyms], device=device)
    synonym_embeddings = F.normalize(_sum_by(embeddings, per_synonym, len(synonyms)), dim=-1)
    return F.normalize(_sum_by(synonym_embeddings, per_name, len(names)), dim=-1)


def _sum_by(x: torch.Tensor, index: torch.Tensor, groups: int) -> torch.Tensor:
    """Row sums of x per group: out[g] = sum of x[i] with index[i] == g."""
    return x.new_zeros(groups, x.shape[1]).index_add_(0, index, x)


def _synonyms(name: str) -> List[str]:
    """"cat, kitty" -> ["cat", "kitty"]."""
    return [s.strip() for s in name.split(",")]


def _warn_truncated(texts: Sequence[str], context_length: int) -> None:
    """Log the prompts that CLIP's context of ``context_length`` tokens cuts short."""
    too_long = []
    for text in texts:
        try:
            clip.tokenize([text], context_length=context_length)
        except RuntimeError:
            too_long.append(text)
    if too_long:
        logger.warning(
            f"{len(too_long)} prompt(s) exceed CLIP's context of {context_length} tokens and are "
            f"cut to fit, so their end is not read: {too_long}. Shorten these class names (or "
            "split them into synonyms, 'a, b')."
        )
