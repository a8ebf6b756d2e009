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
"""
import logging
import os
import pickle

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


class CheckpointMismatchError(ValueError):
    pass


class CheckpointFileError(ValueError):
    """A weights file that cannot be read as a checkpoint."""


class StrictCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose ``load`` raises ``CheckpointMismatchError`` when the
    file lacks weights of the model, has weights the model does not, or has other shapes,
    and ``CheckpointFileError`` when the file is not a readable checkpoint.

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
        """Keys of ``incompatible`` that are expected for this checkpoint (none here)."""
        return set()

    def _load_model(self, checkpoint):
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
        return incompatible


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
