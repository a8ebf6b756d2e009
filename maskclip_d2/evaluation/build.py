"""``build_evaluator``: the evaluator of a registered dataset, from its ``evaluator_type``."""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    SemSegEvaluator,
)

from .coco_ovd_evaluation import COCOOpenVocabularyEvaluator
from .panoptic_things_evaluation import PanopticThingsCOCOEvaluator


def build_evaluator(cfg, dataset_name, output_folder=None):
    """The evaluator of ``dataset_name`` (what ``DefaultTrainer.build_evaluator`` returns).

    ``evaluator_type`` in the dataset's metadata picks it:

    * ``coco_panoptic_seg``: :class:`COCOPanopticEvaluator` (PQ, SQ, RQ; all / things / stuff),
      with, as Mask2Former evaluates a panoptic dataset on all three tasks,
      :class:`SemSegEvaluator` (mIoU) when the metadata has a ``sem_seg_root`` and
      :class:`PanopticThingsCOCOEvaluator` (mask AP of the things) when its ``json_file`` (the instances
      JSON) exists; ``cfg.MODEL.MASKCLIP.TEST.{PANOPTIC,SEMANTIC,INSTANCE}_ON`` pick among
      them (a config without those keys gets PQ only). Several evaluators come as one
      :class:`DatasetEvaluators`, whose results hold ``panoptic_seg``, ``sem_seg``, ``segm``;
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
        return _panoptic_dataset_evaluators(cfg, dataset_name, output_folder)
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


def _panoptic_dataset_evaluators(cfg, dataset_name, output_folder):
    """PQ, and mIoU / mask AP where the dataset has their ground truth (see build_evaluator)."""
    metadata = MetadataCatalog.get(dataset_name)
    test = cfg.MODEL.get("MASKCLIP", {}).get("TEST", None)
    panoptic_on = test.PANOPTIC_ON if test is not None else True
    semantic_on = test.SEMANTIC_ON if test is not None else False
    instance_on = test.INSTANCE_ON if test is not None else False
    evaluators = []
    if panoptic_on:
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    if semantic_on and metadata.get("sem_seg_root", None):
        evaluators.append(SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder))
    elif semantic_on:
        logging.getLogger(__name__).warning(
            f"no mIoU for '{dataset_name}': its metadata has no sem_seg_root (semantic PNGs); "
            "register it with maskclip_d2.data.datasets.register_panoptic_dataset, which "
            "derives them from the panoptic PNGs"
        )
    json_file = metadata.get("json_file", None)
    if instance_on and json_file and os.path.isfile(json_file):
        evaluators.append(PanopticThingsCOCOEvaluator(
            dataset_name, tasks=("segm",), distributed=True, output_dir=output_folder,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE))
    elif instance_on:
        logging.getLogger(__name__).warning(
            f"no mask AP for '{dataset_name}': its instances JSON {json_file!r} does not exist "
            "(COCO's comes in annotations_trainval2017.zip; see datasets/README.md)"
        )
    if not evaluators:
        raise ValueError(
            f"no evaluator for '{dataset_name}': MODEL.MASKCLIP.TEST turns panoptic output off "
            "and the dataset has no semantic labels / instances JSON for the outputs left on"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
