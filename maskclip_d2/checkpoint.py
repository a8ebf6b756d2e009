"""Loading MaskCLIP weights: a checkpoint that does not match the model is an error.

Detectron2's ``DetectionCheckpointer`` loads whatever matches and only logs the rest, which
turns a wrong file into a silently half-random model. ``StrictCheckpointer`` raises instead,
naming the keys, before any inference or training starts. Files are read as Detectron2 reads
them (``.pth`` through ``torch.load``, which defaults to ``weights_only=True``); a file that
is empty, damaged, not a checkpoint, or holds pickled Python objects is refused with a
message naming it (never with advice to unpickle an untrusted file).

``TrainingCheckpointer`` (what ``train_net.py`` trains with) is as strict, except for the
partial loads training expects: an ImageNet backbone file converted from another framework
(Detectron2's ``.pkl`` / ``.pyth`` model-zoo files, marked ``matching_heuristics``)
initialises the backbone only, and class heads of another class count (a Mask2Former's
``CLASS_HEAD_SUFFIXES``, a Mask R-CNN's ``MASK_RCNN_CLASS_HEADS``) are re-initialised.

Frozen weights that the config provides (MaskCLIP: CLIP's, from ``MODEL.CLIP.WEIGHTS``, and
the proposal network's, from ``MODEL.MASKCLIP.PROPOSAL_WEIGHTS``) need not be in a checkpoint.
A model says which with two methods:

* ``weights_from_config()``: {state-dict prefix: where the config takes those weights from,
  or None when it names nothing (random weights)}. A checkpoint without them is complete when
  the config names them (the model keeps the config's); otherwise loading raises and says so.
* ``weights_left_out_of_checkpoints()``: the prefixes ``save`` leaves out (the file records
  them under ``"weights_from_config"``).
"""
import logging
import os
import pickle
import struct
from typing import Dict, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer

__all__ = [
    "StrictCheckpointer", "TrainingCheckpointer", "CheckpointMismatchError", "CheckpointFileError",
    "CLASS_HEAD_SUFFIXES", "MASK_RCNN_CLASS_HEADS",
]

logger = logging.getLogger(__name__)

# Keys listed per kind in the error message.
_SHOWN = 10
# The class head of a Mask2Former: a class-agnostic one has 2 outputs (object, no object), a
# COCO panoptic one 134. Fine-tuning stage 1 from a standard Mask2Former replaces it.
CLASS_HEAD_SUFFIXES = ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias")
# A Mask R-CNN's layers whose shape follows its class count (training replaces them too).
MASK_RCNN_CLASS_HEADS = (
    "roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)


# What reading a file that is not a checkpoint raises: the unpickler's own error, or, for bytes
# that happen to be pickle opcodes (a text file: "hello" reads as BINGET 101), whatever the
# opcodes do (KeyError: 101); a pickle of something other than a dict fails Detectron2's
# ``"model" in loaded`` (TypeError).
_NOT_A_CHECKPOINT = (pickle.UnpicklingError, KeyError, IndexError, TypeError, AttributeError,
                     ValueError, UnicodeDecodeError, struct.error)


class CheckpointMismatchError(ValueError):
    pass


class CheckpointFileError(ValueError):
    """A weights file that cannot be read as a checkpoint."""


def _listed(keys: Sequence[str]) -> str:
    more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


class _StateWithout:
    """Stands for a model whose ``state_dict`` leaves out keys under some prefixes."""

    def __init__(self, model, prefixes):
        self.model, self.prefixes = model, tuple(prefixes)

    def state_dict(self):
        state = self.model.state_dict()
        for key in [k for k in state if k.startswith(self.prefixes)]:
            del state[key]
        return state


class StrictCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose ``load`` raises ``CheckpointMismatchError`` when the
    file lacks weights of the model (other than those the config provides, see the module
    docstring), has weights the model does not, or has other shapes, and
    ``CheckpointFileError`` when the file is not a readable checkpoint; its ``save`` leaves
    out the frozen weights the config provides.

    ``replace_class_head=True`` (fine-tuning the class-agnostic stage 1 from a standard
    Mask2Former checkpoint): a Mask2Former class head of another size is not loaded, the model
    keeps its initialisation for it, and one log line says so."""

    def __init__(self, model, save_dir="", *, replace_class_head=False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.replace_class_head = replace_class_head

    def _load_file(self, filename):
        if os.path.isfile(filename) and os.path.getsize(filename) == 0:
            raise CheckpointFileError(
                f"{filename} is empty (0 bytes): an interrupted download or copy? Fetch or copy "
                "the checkpoint again."
            )
        try:
            loaded = super()._load_file(filename)
        except _NOT_A_CHECKPOINT as err:
            if isinstance(err, pickle.UnpicklingError) and (
                    "Unsupported global" in str(err) or "GLOBAL" in str(err)):
                raise CheckpointFileError(
                    f"{filename} holds pickled Python objects besides tensors, which are not "
                    "loaded: a checkpoint may come from anyone, and unpickling runs code. If you "
                    "made this file, save a plain state dict instead: "
                    "torch.save({'model': model.state_dict()}, path)."
                ) from None
            reason = str(err).splitlines()[-1].strip() if str(err).strip() else ""
            if not isinstance(err, pickle.UnpicklingError) or not reason:
                reason = f"{type(err).__name__}{': ' + reason if reason else ''}"
            raise CheckpointFileError(
                f"{filename} is not a PyTorch checkpoint (it cannot be read as one: "
                f"{reason}). Check the path; "
                "MODEL.WEIGHTS must name a .pth saved by torch.save or a Detectron2 .pkl."
            ) from None
        except (EOFError, RuntimeError, OSError) as err:
            raise CheckpointFileError(
                f"{filename} is damaged or truncated ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'unexpected end of file'}). Fetch or "
                "copy the checkpoint again."
            ) from None
        state = loaded.get("model")
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise CheckpointFileError(
                f"{filename} is not a PyTorch checkpoint: it holds a {type(state).__name__}, not a "
                "state dict (names -> tensors). MODEL.WEIGHTS must name a .pth saved by "
                "torch.save({'model': model.state_dict()}, path) or a Detectron2 .pkl."
            )
        return loaded

    def _allowed(self, checkpoint, incompatible):
        """Keys of ``incompatible`` that are expected for this checkpoint (none here)."""
        return set()

    def _from_config(self) -> Dict[str, Optional[str]]:
        method = getattr(self.model, "weights_from_config", None)
        return method() if method is not None else {}

    def save(self, name, **kwargs):
        method = getattr(self.model, "weights_left_out_of_checkpoints", None)
        prefixes = tuple(method()) if method is not None else ()
        if not prefixes:
            return super().save(name, **kwargs)
        sources = self._from_config()
        kwargs["weights_from_config"] = {p: sources.get(p) for p in prefixes}
        model, self.model = self.model, _StateWithout(self.model, prefixes)
        try:  # Detectron2's save (written whole or not at all) of the reduced state dict
            return super().save(name, **kwargs)
        finally:
            self.model = model

    def _load_model(self, checkpoint):
        recorded = checkpoint.get("weights_from_config") or {}
        # A criterion's no-object class weights come from the config (SetCriterion ignores a
        # checkpoint's); a reference checkpoint's may have another vocabulary size.
        for key in [k for k in checkpoint["model"] if k.endswith("criterion.empty_weight")]:
            checkpoint["model"].pop(key)
        incompatible = super()._load_model(checkpoint)
        heads = [s for s in incompatible.incorrect_shapes if s[0].endswith(CLASS_HEAD_SUFFIXES)]
        if heads and self.replace_class_head:
            key, theirs, ours = heads[0]
            logger.info(
                f"Re-initialising the class head {key.rsplit('.', 1)[0]}: the checkpoint's has "
                f"{theirs[0]} outputs ({theirs[0] - 1} classes + no object), the model's {ours[0]}."
            )
            head_keys = {s[0] for s in heads}
            incompatible.incorrect_shapes[:] = [s for s in incompatible.incorrect_shapes if s not in heads]
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in head_keys]
        allowed = self._allowed(checkpoint, incompatible)
        sources = self._from_config()
        unprovided, missing = {}, []
        for key in incompatible.missing_keys:
            if key in allowed:
                continue
            prefix = next((p for p in sources if key.startswith(p)), None)
            if prefix is None:
                missing.append(key)
            elif sources[prefix] is None:
                unprovided.setdefault(prefix, []).append(key)
            # else: the config names them; the model keeps the config's weights

        problems = []
        for title, keys in (
            ("missing from the checkpoint", missing),
            ("unknown to the model", [k for k in incompatible.unexpected_keys if k not in allowed]),
            ("of another shape", [f"{k} {tuple(a)} vs model {tuple(b)}"
                                  for k, a, b in incompatible.incorrect_shapes if k not in allowed]),
        ):
            if keys:
                problems.append(f"{len(keys)} keys {title}: {_listed(keys)}")
        for prefix, keys in unprovided.items():
            saved_from = recorded.get(prefix)
            problems.append(
                f"{len(keys)} keys of frozen weights under '{prefix}' are missing from the checkpoint "
                f"({_listed(keys)}): checkpoints leave them out when the config names where they "
                f"come from{f' (this one was saved with {saved_from})' if saved_from else ''}, but "
                f"this config names nothing (random weights). Set it as when the checkpoint was "
                f"saved, e.g. MODEL.CLIP.WEIGHTS '' for the official file of MODEL.CLIP.NAME, or a path"
            )
        if problems:
            hint = "Check that the config is the one the checkpoint was trained with."
            if heads and not self.replace_class_head:
                key, theirs, ours = heads[0]
                hint = (
                    f"{key.rsplit('.', 1)[0]} is a Mask2Former class head with {theirs[0]} outputs "
                    f"where this model has {ours[0]}: the checkpoint is a {theirs[0] - 1}-class "
                    f"Mask2Former. To fine-tune the class-agnostic stage 1 from it, train with "
                    f"train_net.py (stage 1 replaces the class head); to use it as the proposal "
                    f"network as it is, drop its class head with tools/convert_official_checkpoint.py "
                    f"--proposals FILE --drop-class-head."
                )
            raise CheckpointMismatchError(
                f"the checkpoint does not match the model ({type(self.model).__name__}): "
                + "; ".join(problems) + ". " + hint
            )
        return incompatible._replace(missing_keys=[])  # the rest raised; `provided` keep the config's


class TrainingCheckpointer(StrictCheckpointer):
    """The trainer's checkpointer: strict, except that class heads of another class count
    are re-initialised (``replace_class_head``, and a Mask R-CNN's ``MASK_RCNN_CLASS_HEADS``)
    and an ImageNet backbone file from another framework (``matching_heuristics``:
    Detectron2's ``.pkl`` / ``.pyth`` model-zoo files) may leave the rest of the model at its
    initialisation. Both are logged."""

    def __init__(self, model, save_dir="", **checkpointables):
        super().__init__(model, save_dir, replace_class_head=True, **checkpointables)

    def _allowed(self, checkpoint, incompatible):
        allowed = set()
        heads = [k for k, _, _ in incompatible.incorrect_shapes
                 if any(k.startswith(h) or f".{h}" in k for h in MASK_RCNN_CLASS_HEADS)]
        if heads:
            logger.warning(f"Re-initialising class heads of another class count: {', '.join(heads)}")
            allowed.update(heads)
        if checkpoint.get("matching_heuristics", False):
            logger.info(
                f"{checkpoint.get('__author__', 'model zoo')} backbone file: "
                f"{len(incompatible.missing_keys)} model weights keep their initialisation, "
                f"{len(incompatible.unexpected_keys)} weights of the file are not used"
            )
            allowed.update(incompatible.missing_keys + incompatible.unexpected_keys)
        return allowed
