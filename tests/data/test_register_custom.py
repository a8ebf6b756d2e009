"""Your own dataset: a COCO-format panoptic dataset, a semantic one and an instance one with
the user's class names, written in tmp in the real formats, registered with one call each and
scored by the evaluators train_net.py builds (PQ + mIoU + AP for panoptic)."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator, DatasetEvaluators, SemSegEvaluator
from panopticapi.utils import id2rgb
from PIL import Image

from maskclip_d2.config import add_maskclip_config
from maskclip_d2.data.datasets import (
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
from maskclip_d2.evaluation import build_evaluator

from helpers.evaluation import as_scores, evaluate, instances_from_masks, panoptic_outputs

H, W = 24, 32
CLASSES = ["toy rabbit, real rabbit", "sky", "grass"]
IS_THING = [True, False, False]
IDS = [7, 11, 20]  # the dataset's own category ids


def scene(k):
    """Segment-id map and segments_info of image k: sky on top, grass below, two rabbits on
    image 0 and one on image 1."""
    pan = np.zeros((H, W), dtype=np.uint32)
    pan[:10] = 1
    pan[10:] = 2
    segments = [{"id": 1, "category_id": 11, "iscrowd": 0}, {"id": 2, "category_id": 20, "iscrowd": 0}]
    boxes = [(12, 20, 2, 10), (14, 22, 18, 30)] if k == 0 else [(10, 24, 8, 20)]
    for n, (y0, y1, x0, x1) in enumerate(boxes):
        pan[y0:y1, x0:x1] = 3 + n
        segments.append({"id": 3 + n, "category_id": 7, "iscrowd": 0})
    for s in segments:
        ys, xs = np.nonzero(pan == s["id"])
        s["area"] = int(len(ys))
        s["bbox"] = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
    return pan, segments


def write_panoptic(root):
    """COCO panoptic format: PNG images (not .jpg), id2rgb PNGs, a JSON with categories."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    images, annotations = [], []
    for k in range(2):
        rng = np.random.RandomState(k)
        Image.fromarray(rng.randint(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"shot{k}.png")
        pan, segments = scene(k)
        Image.fromarray(id2rgb(pan)).save(root / "panoptic" / f"shot{k}.png")
        images.append({"id": 100 + k, "file_name": f"shot{k}.png", "height": H, "width": W})
        annotations.append({"image_id": 100 + k, "file_name": f"shot{k}.png", "segments_info": segments})
    categories = [{"id": i, "name": f"raw name {i}", "isthing": int(t)} for i, t in zip(IDS, IS_THING)]
    with open(root / "panoptic.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return root


@pytest.fixture
def cfg(tmp_path):
    cfg = add_maskclip_config(get_cfg())
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    return cfg


def test_a_custom_panoptic_dataset_reports_pq_miou_and_ap(tmp_path, cfg):
    root = write_panoptic(tmp_path / "mine")
    inputs = sorted(os.listdir(root))
    register_panoptic_dataset("mine_val", CLASSES, IS_THING, str(root / "images"),
                              str(root / "panoptic"), str(root / "panoptic.json"),
                              derived_root=str(tmp_path / "derived"))
    assert sorted(os.listdir(root)) == inputs  # nothing written among the user's files
    metadata = MetadataCatalog.get("mine_val")
    assert metadata.stuff_classes == CLASSES
    assert metadata.thing_dataset_id_to_contiguous_id == {7: 0}
    records = DatasetCatalog.get("mine_val")
    assert [os.path.basename(r["file_name"]) for r in records] == ["shot0.png", "shot1.png"]
    assert all(os.path.isfile(r["file_name"]) for r in records)

    # Derived semantic labels: contiguous ids of the user's classes.
    sem = np.asarray(Image.open(records[0]["sem_seg_file_name"]))
    pan, _ = scene(0)
    assert np.array_equal(sem, np.select([pan == 1, pan == 2], [1, 2], 0))

    evaluator = build_evaluator(cfg, "mine_val")
    assert isinstance(evaluator, DatasetEvaluators)
    assert [type(e) for e in evaluator._evaluators][:2] == [COCOPanopticEvaluator, SemSegEvaluator]
    assert isinstance(evaluator._evaluators[2], COCOEvaluator)

    # The ground truth as the prediction: 100 on all three.
    labels = [np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64) for r in records]
    instances = []
    for r in records:
        pan = np.asarray(Image.open(r["pan_seg_file_name"])).astype(np.uint32)
        pan = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
        masks = [pan == s["id"] for s in r["segments_info"] if s["isthing"]]
        instances.append(instances_from_masks(masks, [0] * len(masks), [1.0] * len(masks)))

    def outputs(sem_labels, inst):
        return [{**p, **as_scores(s, num_classes=3), **i}
                for p, s, i in zip(panoptic_outputs(records), sem_labels, inst)]

    results = evaluate(evaluator, records, outputs(labels, instances))
    figures = {"PQ": results["panoptic_seg"]["PQ"], "mIoU": results["sem_seg"]["mIoU"],
               "AP": results["segm"]["AP"]}
    assert figures == pytest.approx({"PQ": 100.0, "mIoU": 100.0, "AP": 100.0})

    # Grass predicted as sky on image 1: IoU_sky = sky / (sky + grass of image 1), IoU_grass =
    # grass of image 0 / all grass, rabbits exact. One rabbit missed on image 0: AP falls.
    wrong = labels[1].copy()
    wrong[wrong == 2] = 1
    sky, grass0, grass1 = 2 * 10 * 32, (labels[0] == 2).sum(), (labels[1] == 2).sum()
    rabbits = (labels[0] == 0).sum() + (labels[1] == 0).sum()
    expected = (1 + sky / (sky + grass1) + grass0 / (grass0 + grass1)) / 3
    fewer = [instances_from_masks([instances[0]["instances"].pred_masks[0].numpy()], [0], [1.0]),
             instances[1]]
    results = evaluate(evaluator, records, outputs([labels[0], wrong], fewer))
    assert rabbits > 0
    assert results["sem_seg"]["mIoU"] == pytest.approx(100 * expected)
    assert results["segm"]["AP"] < 100


def test_a_panoptic_dataset_without_semantic_labels_says_mIoU_is_missing(tmp_path, cfg, caplog):
    from detectron2.data.datasets import register_coco_panoptic

    root = write_panoptic(tmp_path / "mine")
    register_coco_panoptic("plain_panoptic", {"stuff_classes": CLASSES, "thing_classes": CLASSES,
                                              "thing_dataset_id_to_contiguous_id": {7: 0},
                                              "stuff_dataset_id_to_contiguous_id": {7: 0, 11: 1, 20: 2}},
                           str(root / "images"), str(root / "panoptic"), str(root / "panoptic.json"),
                           str(root / "no_instances.json"))
    with caplog.at_level(logging.WARNING):
        build_evaluator(cfg, "plain_panoptic")
    assert "no mIoU for 'plain_panoptic'" in caplog.text


def test_custom_registration_refuses_what_does_not_fit(tmp_path):
    root = write_panoptic(tmp_path / "mine")
    args = (str(root / "images"), str(root / "panoptic"), str(root / "panoptic.json"))
    with pytest.raises(ValueError, match="lists 3 categories for 2 class names"):
        register_panoptic_dataset("bad", CLASSES[:2], None, *args)
    with pytest.raises(FileNotFoundError, match="panoptic JSON .*missing.json does not exist"):
        register_panoptic_dataset("bad", CLASSES, IS_THING, *args[:2], str(root / "missing.json"))
    with pytest.raises(ValueError, match="category 7, which is not among"):
        register_panoptic_dataset("bad", CLASSES, IS_THING, *args, category_ids=[1, 11, 20],
                                  derived_root=str(tmp_path / "d"))


def test_custom_semantic_and_instance_datasets_score_100_on_their_ground_truth(tmp_path, cfg):
    root = tmp_path / "sem"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = []
    for k in range(2):
        Image.fromarray(np.full((H, W, 3), 40 * k, dtype=np.uint8)).save(root / "images" / f"a{k}.jpg")
        label = np.full((H, W), 1, dtype=np.uint8)
        label[12:] = 2
        label[:4, :4] = 255  # void
        label[20:, 20:] = 0
        Image.fromarray(label).save(root / "labels" / f"a{k}.png")
        labels.append(label.astype(np.int64))
    register_semantic_dataset("mine_sem", CLASSES, str(root / "images"), str(root / "labels"))
    evaluator = build_evaluator(cfg, "mine_sem")
    records = DatasetCatalog.get("mine_sem")
    assert MetadataCatalog.get("mine_sem").stuff_classes == CLASSES
    assert evaluate(evaluator, records, [as_scores(x, 3) for x in labels])["sem_seg"]["mIoU"] == pytest.approx(100)

    # Instances: a COCO JSON with RLE masks, the user's names for its categories 7 and 9.
    masks = [np.zeros((H, W), dtype=bool) for _ in range(2)]
    masks[0][2:10, 3:12] = True
    masks[1][12:20, 15:30] = True
    anns = []
    for n, (m, c) in enumerate(zip(masks, [7, 9])):
        rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": n + 1, "image_id": 1, "category_id": c, "iscrowd": 0, "area": int(m.sum()),
                     "bbox": [float(v) for v in mask_util.toBbox(rle)],
                     "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    with open(root / "instances.json", "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "a0.jpg", "height": H, "width": W}],
                   "annotations": anns, "categories": [{"id": 9, "name": "x"}, {"id": 7, "name": "y"}]}, f)
    register_instance_dataset("mine_inst", ["cat", "dog"], str(root / "images"), str(root / "instances.json"))
    assert MetadataCatalog.get("mine_inst").thing_dataset_id_to_contiguous_id == {7: 0, 9: 1}
    (record,) = DatasetCatalog.get("mine_inst")
    assert [a["category_id"] for a in record["annotations"]] == [0, 1]
    evaluator = build_evaluator(cfg, "mine_inst")
    res = evaluate(evaluator, [record], [instances_from_masks(masks, [0, 1], [1.0, 1.0])])["segm"]
    assert res["AP"] == pytest.approx(100)
    res = evaluate(evaluator, [record], [instances_from_masks(masks, [1, 0], [1.0, 1.0])])["segm"]
    assert res["AP"] == pytest.approx(0)  # the user's names, swapped: every mask wrong


def write_split(root, split, scenes, first_id):
    """One split of the usual layout: ``images/`` and ``panoptic/`` shared by every split,
    ``panoptic_<split>.json`` per split. ``scenes`` are ``scene`` indices."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "panoptic").mkdir(exist_ok=True)
    images, annotations = [], []
    for n, k in enumerate(scenes):
        name = f"{split}{n}.png"
        Image.fromarray(np.full((H, W, 3), 30 * n, dtype=np.uint8)).save(root / "images" / name)
        pan, segments = scene(k)
        Image.fromarray(id2rgb(pan)).save(root / "panoptic" / name)
        images.append({"id": first_id + n, "file_name": name, "height": H, "width": W})
        annotations.append({"image_id": first_id + n, "file_name": name, "segments_info": segments})
    categories = [{"id": i, "name": f"raw name {i}", "isthing": int(t)} for i, t in zip(IDS, IS_THING)]
    with open(root / f"panoptic_{split}.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return [str(root / "images"), str(root / "panoptic"), str(root / f"panoptic_{split}.json")]


def test_two_splits_sharing_one_panoptic_folder_are_each_scored_against_their_own_instances(tmp_path, cfg):
    """train: scene 1 twice (one rabbit each); val: scenes 0 and 1 (2 + 1 rabbits); image ids
    from 0 in both JSONs, all PNGs in one panoptic/ folder, derived files in the default place.
    The val AP is computed against the val split's own things (it was scored against the train
    split's, with no error)."""
    root = tmp_path / "toys"
    register_panoptic_dataset("toys_train", CLASSES, IS_THING, *write_split(root, "train", [1, 1], 0))
    register_panoptic_dataset("toys_val", CLASSES, IS_THING, *write_split(root, "val", [0, 1], 0))
    # val0's first rabbit and val1's rabbit found exactly, val0's second rabbit missed: two
    # true positives of three, no false positive. COCO's 101 recall points 0.00 .. 0.66 have
    # precision 1, the rest 0, at every IoU threshold: AP = 67 / 101.
    records = DatasetCatalog.get("toys_val")
    evaluator = build_evaluator(cfg, "toys_val")
    predicted = []
    for r in records:
        pan = rgb2id_of(r["pan_seg_file_name"])
        rabbits = [pan == s["id"] for s in r["segments_info"] if s["isthing"]]
        predicted.append(instances_from_masks(rabbits[:1], [0], [1.0]))
    labels = [np.asarray(Image.open(r["sem_seg_file_name"])).astype(np.int64) for r in records]
    outputs = [{**p, **as_scores(s, num_classes=3), **i}
               for p, s, i in zip(panoptic_outputs(records), labels, predicted)]
    results = evaluate(evaluator, records, outputs)
    assert results["segm"]["AP"] == pytest.approx(100 * 67 / 101)
    assert results["sem_seg"]["mIoU"] == pytest.approx(100)

    # Each split's derived files in a folder of its own, beside the panoptic PNGs.
    train_json = MetadataCatalog.get("toys_train").json_file
    val_json = MetadataCatalog.get("toys_val").json_file
    assert train_json != val_json
    assert os.path.dirname(os.path.dirname(val_json)) == str(root / "panoptic") + "_maskclip"
    with open(val_json) as f:
        val_things = json.load(f)["annotations"]
    assert sorted((a["image_id"], a["area"]) for a in val_things) == [
        (0, 8 * 8), (0, 8 * 12), (1, 14 * 12)]


def rgb2id_of(path):
    pan = np.asarray(Image.open(path)).astype(np.uint32)
    return pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]


def test_derived_files_follow_an_edited_json_or_class_list(tmp_path):
    root = tmp_path / "toys"
    args = write_split(root, "val", [0], 200)
    register_panoptic_dataset("toys_val", CLASSES, IS_THING, *args)
    first = MetadataCatalog.get("toys_val").json_file
    with open(first) as f:
        assert len(json.load(f)["annotations"]) == 2  # two rabbits

    # The user marks "sky" a thing: sky instances appear, in another folder.
    register_panoptic_dataset("toys_val", CLASSES, [True, True, False], *args)
    with open(MetadataCatalog.get("toys_val").json_file) as f:
        assert sorted(a["category_id"] for a in json.load(f)["annotations"]) == [7, 7, 11]

    # The user edits the JSON (drops a rabbit): derived again, the first files left as they were.
    with open(args[2]) as f:
        info = json.load(f)
    info["annotations"][0]["segments_info"] = info["annotations"][0]["segments_info"][:3]
    with open(args[2], "w") as f:
        json.dump(info, f)
    register_panoptic_dataset("toys_val", CLASSES, IS_THING, *args)
    edited = MetadataCatalog.get("toys_val").json_file
    assert edited != first and os.path.isfile(first)
    with open(edited) as f:
        assert len(json.load(f)["annotations"]) == 1
    assert not [n for n in os.listdir(os.path.dirname(os.path.dirname(edited))) if "partial" in n]
