"""Loading MaskCLIP weights: a checkpoint that does not match the model is an error.

Detectron2's ``DetectionCheckpointer`` loads whatever matches and only logs the rest, which
turns a wrong file into a silently half-random model. ``StrictCheckpointer`` raises instead,
naming the keys, before any inference or training starts. Files are read as Detectron2 reads
them (``.pth`` through ``torch.load``, which defaults to ``weights_only=True``); a file that
is empty, damaged, not a checkpoint, or holds pickled Python objects is refused with a
message naming it (never with advice to unpickle an untrusted file).

``TrainingCheckpointer`` is as strict, except for the two partial loads training expects:
an ImageNet backbone file converted from another framework (Detectron2's ``.pkl`` /
``.pyth`` model-zoo files, marked ``matching_heuristics``) initialises the backbone only,
and class-dependent heads (``CLASS_HEADS``) of another shape are re-initialised, so a model
fine-tunes on another class list.
"""
import logging
import os
import pickle

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["StrictCheckpointer", "TrainingCheckpointer", "CheckpointMismatchError", "CheckpointFileError", "CLASS_HEADS"]

# Keys listed per kind in the error message.
_SHOWN = 10

# Layers whose shape follows the number of classes (Mask2Former's class_embed, Mask R-CNN's
# box and mask predictors): TrainingCheckpointer re-initialises them when the checkpoint has
# another class count.
CLASS_HEADS = (
    "class_embed.",
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)


class CheckpointMismatchError(ValueError):
    pass


class CheckpointFileError(ValueError):
    """A weights file that cannot be read as a checkpoint."""


def _is_class_head(key):
    return any(key.startswith(head) or f".{head}" in key for head in CLASS_HEADS)


class StrictCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose ``load`` raises ``CheckpointMismatchError`` when the
    file lacks weights of the model, has weights the model does not, or has other shapes,
    and ``CheckpointFileError`` when the file is not a readable checkpoint."""

    def _load_file(self, filename):
        if os.path.isfile(filename) and os.path.getsize(filename) == 0:
            raise CheckpointFileError(
                f"{filename} is empty (0 bytes): an interrupted download or copy? Fetch or copy "
                "the checkpoint again."
            )
        try:
            return super()._load_file(filename)
        except pickle.UnpicklingError as err:
            if "Unsupported global" in str(err) or "GLOBAL" in str(err):
                raise CheckpointFileError(
                    f"{filename} holds pickled Python objects besides tensors, which are not "
                    "loaded: a checkpoint may come from anyone, and unpickling runs code. If you "
                    "made this file, save a plain state dict instead: "
                    "torch.save({'model': model.state_dict()}, path)."
                ) from None
            raise CheckpointFileError(
                f"{filename} is not a PyTorch checkpoint (it cannot be read as one: "
                f"{str(err).splitlines()[-1].strip() or type(err).__name__}). Check the path; "
                "MODEL.WEIGHTS must name a .pth saved by torch.save or a Detectron2 .pkl."
            ) from None
        except (EOFError, RuntimeError, OSError) as err:
            raise CheckpointFileError(
                f"{filename} is damaged or truncated ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else 'unexpected end of file'}). Fetch or "
                "copy the checkpoint again."
            ) from None

    def _allowed(self, checkpoint, incompatible):
        """The part of ``incompatible`` that is expected for this checkpoint: nothing here."""
        return set()

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        allowed = self._allowed(checkpoint, incompatible)
        problems = []
        for title, keys in (
            ("missing from the checkpoint", [k for k in incompatible.missing_keys if k not in allowed]),
            ("unknown to the model", [k for k in incompatible.unexpected_keys if k not in allowed]),
            ("of another shape", [f"{k} {tuple(a)} vs model {tuple(b)}"
                                  for k, a, b in incompatible.incorrect_shapes if k not in allowed]),
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


class TrainingCheckpointer(StrictCheckpointer):
    """The trainer's checkpointer: strict, except that an ImageNet backbone file from another
    framework (``matching_heuristics``: Detectron2's ``.pkl`` / ``.pyth`` model-zoo files)
    may leave the rest of the model at its initialisation, and class heads (``CLASS_HEADS``)
    of another shape are re-initialised. Both are logged."""

    def _allowed(self, checkpoint, incompatible):
        logger = logging.getLogger(__name__)
        allowed = set()
        heads = [k for k, _, _ in incompatible.incorrect_shapes if _is_class_head(k)]
        if heads:
            logger.warning(
                f"class heads of another shape are re-initialised (fine-tuning on another class "
                f"list): {', '.join(heads)}"
            )
            allowed.update(heads)
        if checkpoint.get("matching_heuristics", False):
            partial = incompatible.missing_keys + incompatible.unexpected_keys
            logger.info(
                f"{checkpoint.get('__author__', 'a model zoo')} backbone file: {len(incompatible.missing_keys)} "
                f"model weights keep their initialisation, {len(incompatible.unexpected_keys)} "
                "weights of the file are not used"
            )
            allowed.update(partial)
        return allowed
