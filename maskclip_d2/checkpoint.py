"""Loading MaskCLIP weights: a checkpoint that does not match the model is an error.

Detectron2's ``DetectionCheckpointer`` loads whatever matches and only logs the rest, which
turns a wrong file into a silently half-random model. ``StrictCheckpointer`` raises instead,
naming the keys, before any inference or training starts. Files are read as Detectron2 reads
them (``.pth`` through ``torch.load``, which defaults to ``weights_only=True``).

Frozen weights that the config provides (MaskCLIP: CLIP's, from ``MODEL.CLIP.WEIGHTS``) need
not be in a checkpoint. A model says which with two methods:

* ``weights_from_config()``: {state-dict prefix: where the config takes those weights from,
  or None when it names nothing (random weights)}. A checkpoint without them is complete when
  the config names them (the model keeps the config's); otherwise loading raises and says so.
* ``weights_left_out_of_checkpoints()``: the prefixes ``save`` leaves out (the file records
  them under ``"weights_from_config"``).
"""
import logging
from typing import Dict, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["StrictCheckpointer", "CheckpointMismatchError", "CLASS_HEAD_SUFFIXES"]

logger = logging.getLogger(__name__)

# Keys listed per kind in the error message.
_SHOWN = 10
# The class head of a Mask2Former: a class-agnostic one has 2 outputs (object, no object), a
# COCO panoptic one 134. Fine-tuning stage 1 from a standard Mask2Former replaces it.
CLASS_HEAD_SUFFIXES = ("sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias")


class CheckpointMismatchError(ValueError):
    pass


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
    docstring), has weights the model does not, or has other shapes; and whose ``save``
    leaves out the frozen weights the config provides.

    ``replace_class_head=True`` (fine-tuning the class-agnostic stage 1 from a standard
    Mask2Former checkpoint): a Mask2Former class head of another size is not loaded, the model
    keeps its initialisation for it, and one log line says so."""

    def __init__(self, model, save_dir="", *, replace_class_head=False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.replace_class_head = replace_class_head

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
        sources = self._from_config()
        unprovided, missing = {}, []
        for key in incompatible.missing_keys:
            prefix = next((p for p in sources if key.startswith(p)), None)
            if prefix is None:
                missing.append(key)
            elif sources[prefix] is None:
                unprovided.setdefault(prefix, []).append(key)
            # else: the config names them; the model keeps the config's weights

        problems = []
        for title, keys in (
            ("missing from the checkpoint", missing),
            ("unknown to the model", incompatible.unexpected_keys),
            ("of another shape", [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]),
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
