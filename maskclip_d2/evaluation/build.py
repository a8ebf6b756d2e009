"""``build_evaluator``: the evaluator of a registered dataset, from its ``evaluator_type``."""
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    LVISEvaluator,
    SemSegEvaluator,
)

from .coco_ovd_evaluation import COCOOpenVocabularyEvaluator


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator of ``dataset_name`` (what ``DefaultTrainer.build_evaluator`` returns).

    ``evaluator_type`` in the dataset's metadata picks it:

    * ``coco_panoptic_seg``: :class:`COCOPanopticEvaluator` (PQ, SQ, RQ; all / things / stuff);
    * ``sem_seg``: :class:`SemSegEvaluator` (mIoU, fwIoU, mACC, pACC);
    * ``coco``: :class:`COCOEvaluator` on masks (AP, AP50, AP75, ...);
    * ``lvis``: :class:`LVISEvaluator` on masks (AP, AP50, AP75, APr/c/f, ...);
    * ``coco_ovd``: :class:`COCOOpenVocabularyEvaluator` (mask AP50 of the base / target /
      all classes of the COCO 48/17 split).

    Args:
        cfg (CfgNode): uses ``OUTPUT_DIR`` and ``TEST.DETECTIONS_PER_IMAGE`` (COCO-style
            evaluators; LVIS always uses its 300).
        dataset_name (str): a registered dataset.
        output_folder (str): where evaluators dump predictions; default
            ``cfg.OUTPUT_DIR/inference``.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE
    if evaluator_type == "coco_panoptic_seg":
        return COCOPanopticEvaluator(dataset_name, output_folder)
    if evaluator_type == "sem_seg":
        return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
    if evaluator_type == "coco":
        return COCOEvaluator(dataset_name, tasks=("segm",), distributed=True,
                             output_dir=output_folder, max_dets_per_image=max_dets)
    if evaluator_type == "lvis":
        # LVIS's own rule: 300 detections per image, whatever the config says.
        return LVISEvaluator(dataset_name, tasks=("segm",), distributed=True,
                             output_dir=output_folder, max_dets_per_image=300)
    if evaluator_type == "coco_ovd":
        return COCOOpenVocabularyEvaluator(dataset_name, tasks=("segm",), distributed=True,
                                           output_dir=output_folder,
                                           max_dets_per_image=max_dets)
    raise NotImplementedError(
        f"No evaluator for dataset '{dataset_name}' with evaluator_type={evaluator_type!r}; "
        "known: coco_panoptic_seg, sem_seg, coco, lvis, coco_ovd."
    )
