"""build_evaluator picks the evaluator of each dataset type; ground truth scores 100 and a
prediction with a known error scores the value computed by hand."""
import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, SemSegEvaluator
from PIL import Image

from maskclip_d2.data.datasets.register_ade20k_150 import register_all_ade20k_150
from maskclip_d2.evaluation import build_evaluator
from helpers.evaluation import as_scores, evaluate, instances_from_masks, panoptic_outputs
from helpers.tiny_datasets import run_prepare, write_ade20k_150


@pytest.fixture
def cfg(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    return cfg


@pytest.fixture
def ade(tmp_path):
    write_ade20k_150(tmp_path / "data")
    run_prepare("prepare_ade20k_150", tmp_path / "data")
    register_all_ade20k_150(str(tmp_path / "data"))


# ---- panoptic (PQ) -----------------------------------------------------------------------
def test_panoptic_gt_scores_100_and_a_missed_segment_the_hand_value(ade, cfg):
    evaluator = build_evaluator(cfg, "ade20k_panoptic_val")
    assert isinstance(evaluator, COCOPanopticEvaluator)
    records = DatasetCatalog.get("ade20k_panoptic_val")
    pq = evaluate(evaluator, records, panoptic_outputs(records))["panoptic_seg"]
    assert pq["PQ"] == pytest.approx(100) and pq["SQ"] == pytest.approx(100)
    assert pq["PQ_th"] == pytest.approx(100) and pq["PQ_st"] == pytest.approx(100)

    # Categories in the ground truth: stuff 0, 1, 2 and things 50 (2 segments), 57 (1).
    # Missing thing 57's only segment: PQ_57 = 0 (one FN), every other category 1.
    thing57 = next(s["id"] for s in records[1]["segments_info"] if s["category_id"] == 57)
    pq = evaluate(evaluator, records, panoptic_outputs(records, (2, thing57)))["panoptic_seg"]
    assert pq["PQ"] == pytest.approx(100 * 4 / 5)
    assert pq["PQ_th"] == pytest.approx(100 * 1 / 2)
    assert pq["PQ_st"] == pytest.approx(100)
    # panopticapi counts SQ = 0 for a category without true positives
    assert pq["RQ"] == pytest.approx(100 * 4 / 5) and pq["SQ"] == pytest.approx(100 * 4 / 5)


# ---- semantic (mIoU) ---------------------------------------------------------------------
def semantic_labels(records):
    return [np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64) for r in records]


def test_semantic_gt_scores_100_and_flipped_pixels_the_hand_value(ade, cfg):
    evaluator = build_evaluator(cfg, "ade20k_sem_seg_val")
    assert isinstance(evaluator, SemSegEvaluator)
    records = DatasetCatalog.get("ade20k_sem_seg_val")
    labels = semantic_labels(records)
    res = evaluate(evaluator, records, [as_scores(x) for x in labels])["sem_seg"]
    assert res["mIoU"] == pytest.approx(100) and res["pACC"] == pytest.approx(100)

    # Image 1 (classes 0: 384 px, 2: 192 px, 50: 192 px). Predict class 2 on 64 pixels of
    # class 0 -> IoU_0 = 320 / 384, IoU_2 = 192 / 256. Image 2 (classes 1: 640 px, 57: 128 px)
    # is exact. mIoU over the 5 classes present.
    wrong = labels[0].copy()
    wrong[:2] = 2  # 2 rows x 32 = 64 pixels of class 0
    res = evaluate(evaluator, records, [as_scores(wrong), as_scores(labels[1])])["sem_seg"]
    expected = (320 / 384 + 192 / 256 + 1 + 1 + 1) / 5
    assert res["mIoU"] == pytest.approx(100 * expected)
    assert res["pACC"] == pytest.approx(100 * (1 - 64 / (768 + 768)))


# ---- instances (mask AP) -----------------------------------------------------------------
def test_instance_gt_scores_100_and_a_wrong_class_the_hand_value(ade, cfg):
    evaluator = build_evaluator(cfg, "ade20k_instance_val")
    assert isinstance(evaluator, COCOEvaluator)
    records = DatasetCatalog.get("ade20k_instance_val")
    masks = [[mask_util.decode(a["segmentation"]).astype(bool) for a in r["annotations"]]
             for r in records]
    classes = [[a["category_id"] for a in r["annotations"]] for r in records]
    outputs = [instances_from_masks(m, c, [1.0] * len(c)) for m, c in zip(masks, classes)]
    res = evaluate(evaluator, records, outputs)["segm"]
    assert res["AP"] == pytest.approx(100) and res["AP50"] == pytest.approx(100)

    # Contiguous thing classes: image 1 has two "refrigerator, icebox" (29), image 2 one
    # "pillow" (33). The pillow predicted as a refrigerator with a lower score than the two
    # true refrigerators: class 33 has recall 0 (AP 0); class 29 ranks its two true positives
    # first, so its false positive does not lower its precision (AP 100). AP = (100 + 0) / 2.
    assert classes == [[29, 29], [33]]
    outputs[1] = instances_from_masks(masks[1], [29], [0.5])
    res = evaluate(evaluator, records, outputs)["segm"]
    assert res["AP50"] == pytest.approx(50) and res["AP"] == pytest.approx(50)


# ---- COCO 48/17 (base / target / all AP50) -----------------------------------------------
def box_masks(record):
    """Ground-truth masks of a record's axis-aligned polygon annotations."""
    masks = []
    for a in record["annotations"]:
        x, y, w, h = [int(v) for v in a["bbox"]]
        m = np.zeros((record["height"], record["width"]), dtype=bool)
        m[y:y + h, x:x + w] = True
        masks.append(m)
    return masks


@pytest.fixture
def ovd(tmp_path):
    from maskclip_d2.data.datasets.register_coco_ovd import register_all_coco_ovd
    from helpers.tiny_datasets import write_coco_instances

    write_coco_instances(tmp_path / "data")
    run_prepare("prepare_coco_ovd", tmp_path / "data")
    register_all_coco_ovd(str(tmp_path / "data"))


def test_coco_ovd_generalized_and_constrained_ap50(ovd, cfg):
    from detectron2.data import MetadataCatalog

    records = DatasetCatalog.get("coco_2017_val_ovd_generalized")
    evaluator = build_evaluator(cfg, "coco_2017_val_ovd_generalized")
    outputs = [instances_from_masks(box_masks(r), [a["category_id"] for a in r["annotations"]],
                                    [1.0] * len(r["annotations"])) for r in records]
    res = evaluate(evaluator, records, outputs)["segm"]
    for group in ("base", "target", "all"):
        assert res[f"{group} AP50"] == pytest.approx(100)

    # The cat of image 1 predicted as "dog" (score 0.5, below the true dog's 1.0): cat AP 0,
    # dog AP 100 (its true positive ranks first), person AP 100.
    # base = person = 100; target = (cat 0 + dog 100) / 2 = 50; all = (100 + 0 + 100) / 3.
    names = MetadataCatalog.get("coco_2017_val_ovd_generalized").thing_classes
    person, dog = names.index("person"), names.index("dog")
    outputs[0] = instances_from_masks(box_masks(records[0]), [person, dog], [1.0, 0.5])
    res = evaluate(evaluator, records, outputs)["segm"]
    assert res["base AP50"] == pytest.approx(100)
    assert res["target AP50"] == pytest.approx(50)
    assert res["all AP50"] == pytest.approx(100 * 2 / 3)

    # Constrained target: vocabulary = the 17 target classes, same error.
    records = DatasetCatalog.get("coco_2017_val_ovd_constrained_target")
    tnames = MetadataCatalog.get("coco_2017_val_ovd_constrained_target").thing_classes
    evaluator = build_evaluator(cfg, "coco_2017_val_ovd_constrained_target")
    outputs = [instances_from_masks(box_masks(records[0]), [tnames.index("dog")], [0.5]),
               instances_from_masks(box_masks(records[1]), [tnames.index("dog")], [1.0])]
    res = evaluate(evaluator, records, outputs)["segm"]
    assert res["target AP50"] == pytest.approx(50) and "base AP50" not in res
    assert "all AP50" not in res


# ---- LVIS --------------------------------------------------------------------------------
def test_lvis_gt_scores_100_and_a_wrong_class_the_hand_value(tmp_path, cfg):
    from detectron2.evaluation import LVISEvaluator

    from maskclip_d2.data.datasets.register_lvis import register_all_lvis
    from helpers.tiny_datasets import write_lvis

    write_lvis(tmp_path / "data")
    run_prepare("prepare_lvis", tmp_path / "data")
    register_all_lvis(str(tmp_path / "data"))
    records = DatasetCatalog.get("lvis_v1_val")
    evaluator = build_evaluator(cfg, "lvis_v1_val")
    assert isinstance(evaluator, LVISEvaluator)
    outputs = [instances_from_masks(box_masks(r), [a["category_id"] for a in r["annotations"]],
                                    [1.0] * len(r["annotations"])) for r in records]
    res = evaluate(evaluator, records, outputs)["segm"]
    assert res["AP"] == pytest.approx(100) and res["AP50"] == pytest.approx(100)

    # Image 1's object of category 2 predicted as category 1 (score 0.5): category 1 keeps
    # AP 100 (its true positive ranks first); category 2 finds 1 of its 2 objects: precision
    # 1 at the 51 recall thresholds 0, 0.01, ..., 0.5 of the 101, 0 above: AP 51 / 101.
    outputs[0] = instances_from_masks(box_masks(records[0]), [0, 0], [1.0, 0.5])
    res = evaluate(evaluator, records, outputs)["segm"]
    expected = 100 * (1 + 51 / 101) / 2
    assert res["AP50"] == pytest.approx(expected) and res["AP"] == pytest.approx(expected)


def test_unknown_evaluator_type_is_named(cfg):
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("maskclip_test_unknown").set(evaluator_type="cityscapes_instance")
    with pytest.raises(NotImplementedError, match="cityscapes_instance"):
        build_evaluator(cfg, "maskclip_test_unknown")


# ---- a panoptic dataset: PQ + mIoU + AP as MODEL.MASKCLIP.TEST asks ---------------------
def test_panoptic_dataset_gets_pq_miou_and_ap_evaluators(tmp_path, cfg):
    from detectron2.evaluation import DatasetEvaluators

    from maskclip_d2 import add_maskclip_config
    from maskclip_d2.data.datasets.register_coco_panoptic import register_all_coco_panoptic
    from maskclip_d2.evaluation import PanopticThingsCOCOEvaluator
    from helpers.tiny_datasets import write_coco_panoptic_scenes

    write_coco_panoptic_scenes(tmp_path / "data", splits=("val",), num_images=1)
    run_prepare("prepare_coco_panoptic", tmp_path / "data", "--splits", "val")
    register_all_coco_panoptic(str(tmp_path / "data"))
    name = "coco_2017_val_panoptic_with_sem_seg"
    add_maskclip_config(cfg)

    def kinds(evaluator):
        inner = evaluator._evaluators if isinstance(evaluator, DatasetEvaluators) else [evaluator]
        return [type(e) for e in inner]

    assert kinds(build_evaluator(cfg, name)) == [
        COCOPanopticEvaluator, SemSegEvaluator, PanopticThingsCOCOEvaluator]
    cfg.MODEL.MASKCLIP.TEST.PANOPTIC_ON = False
    assert kinds(build_evaluator(cfg, name)) == [SemSegEvaluator, PanopticThingsCOCOEvaluator]
    cfg.MODEL.MASKCLIP.TEST.SEMANTIC_ON = False
    assert isinstance(build_evaluator(cfg, name), PanopticThingsCOCOEvaluator)
    # no instances JSON (a download without annotations_trainval2017.zip): no AP
    (tmp_path / "data/coco/annotations/instances_val2017.json").unlink()
    cfg.MODEL.MASKCLIP.TEST.PANOPTIC_ON = True
    assert kinds(build_evaluator(cfg, name)) == [COCOPanopticEvaluator]
    cfg.MODEL.MASKCLIP.TEST.PANOPTIC_ON = False
    with pytest.raises(ValueError, match="no evaluator"):
        build_evaluator(cfg, name)
