"""Loading MaskCLIP weights: a checkpoint that does not match the model is an error.

Detectron2's ``DetectionCheckpointer`` loads whatever matches and only logs the rest, which
turns a wrong file into a silently half-random model. ``StrictCheckpointer`` raises instead,
naming the keys, before any inference or training starts. Files are read as Detectron2 reads
them (``.pth`` through ``torch.load``, which defaults to ``weights_only=True``).
"""
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["StrictCheckpointer", "CheckpointMismatchError"]

# Keys listed per kind in the error message.
_SHOWN = 10


class CheckpointMismatchError(ValueError):
    pass


class StrictCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose ``load`` raises ``CheckpointMismatchError`` when the
    file lacks weights of the model, has weights the model does not, or has other shapes."""

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = []
        for title, keys in (
            ("missing from the checkpoint", incompatible.missing_keys),
            ("unknown to the model", incompatible.unexpected_keys),
            ("of another shape", [f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]),
        ):
            if keys:
                more = f" (and {len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
                problems.append(f"{len(keys)} keys {title}: {', '.join(keys[:_SHOWN])}{more}")
        if problems:
            raise CheckpointMismatchError(
                f"the checkpoint does not match the model ({type(self.model).__name__}): "
                + "; ".join(problems)
                + ". Check that the config is the one the checkpoint was trained with."
            )
        return incompatible
