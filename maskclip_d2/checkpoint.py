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
from typing import Dict, Optional, Sequence

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["StrictCheckpointer", "CheckpointMismatchError"]

# Keys listed per kind in the error message.
_SHOWN = 10


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
    leaves out the frozen weights the config provides."""

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
        incompatible = super()._load_model(checkpoint)
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
            raise CheckpointMismatchError(
                f"the checkpoint does not match the model ({type(self.model).__name__}): "
                + "; ".join(problems)
                + ". Check that the config is the one the checkpoint was trained with."
            )
        return incompatible._replace(missing_keys=[])  # the rest raised; `provided` keep the config's
