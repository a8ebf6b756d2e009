"""detectron2's evaluators on tiny datasets written in their real annotation formats.

Each evaluator gets (1) the ground truth fed back as the prediction (metrics == 100) and (2) a
hand-built prediction with a known error whose metric values are computed by hand below, so a
broken evaluator cannot pass.
"""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg, register_coco_instances
from detectron2.data.datasets.coco_panoptic import register_coco_panoptic
from detectron2.data.datasets.lvis import load_lvis_json
from detectron2.data.detection_utils import annotations_to_instances
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    LVISEvaluator,
    SemSegEvaluator,
)
from detectron2.structures import BoxMode, Instances

H, W = 32, 48


def _image(seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(H, W, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Semantic segmentation
# --------------------------------------------------------------------------------------------
SEM_CLASSES = ["c0", "c1", "c2"]


def _sem_gt():
    """Rows 0..3 are ignored (255); below: class 0 in cols 0..7 (224 px), class 1 in cols
    8..31 (672 px), class 2 in cols 32..47 (448 px)."""
    gt = np.zeros((H, W), dtype=np.uint8)
    gt[:, 8:32] = 1
    gt[:, 32:] = 2
    gt[:4, :] = 255
    return gt


@pytest.fixture
def sem_seg_dataset(tmp_path, register_dataset, helpers):
    img_dir, gt_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    gt_dir.mkdir()
    gts = {}
    for i in range(2):
        gt = _sem_gt() if i == 0 else np.roll(_sem_gt(), 5, axis=1)
        helpers.write_rgb(img_dir / f"im{i}.jpg", _image(i))
        helpers.write_label_png(gt_dir / f"im{i}.png", gt)
        gts[str(img_dir / f"im{i}.jpg")] = gt

    def _register(name):
        DatasetCatalog.register(
            name, lambda: load_sem_seg(str(gt_dir), str(img_dir), gt_ext="png", image_ext="jpg")
        )
        MetadataCatalog.get(name).set(
            stuff_classes=SEM_CLASSES, ignore_label=255, evaluator_type="sem_seg"
        )

    name = register_dataset("d2test_semseg", _register)
    return name, gts


def _sem_seg_output(labels):
    """(C, H, W) scores whose argmax is `labels`."""
    labels = torch.as_tensor(labels.astype(np.int64))
    return {"sem_seg": F.one_hot(labels, len(SEM_CLASSES)).permute(2, 0, 1).float()}


def test_sem_seg_evaluator_perfect(sem_seg_dataset, tmp_path):
    name, gts = sem_seg_dataset
    inputs = DatasetCatalog.get(name)
    assert len(inputs) == 2 and all("sem_seg_file_name" in d for d in inputs)
    evaluator = SemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for d in inputs:
        pred = gts[d["file_name"]].copy()
        pred[pred == 255] = 2  # ignored pixels: any prediction is fine
        evaluator.process([d], [_sem_seg_output(pred)])
    res = evaluator.evaluate()["sem_seg"]
    assert res["mIoU"] == pytest.approx(100.0)
    assert res["fwIoU"] == pytest.approx(100.0)
    assert res["pACC"] == pytest.approx(100.0)
    assert res["mACC"] == pytest.approx(100.0)
    for c in SEM_CLASSES:
        assert res[f"IoU-{c}"] == pytest.approx(100.0)
    assert os.path.isfile(tmp_path / "out" / "sem_seg_predictions.json")


def test_sem_seg_evaluator_known_error(sem_seg_dataset):
    """Half of class 1 (cols 8..19, 336 px) predicted as class 0, ignored rows predicted wrong.

    IoU0 = 224 / (224 + 336) = 0.4, IoU1 = 336 / 672 = 0.5, IoU2 = 1
    mIoU = 1.9 / 3; fwIoU = (224*0.4 + 672*0.5 + 448*1) / 1344 = 0.65
    pACC = (224 + 336 + 448) / 1344 = 0.75; mACC = (1 + 0.5 + 1) / 3
    """
    name, gts = sem_seg_dataset
    d = [x for x in DatasetCatalog.get(name) if x["file_name"].endswith("im0.jpg")][0]
    pred = _sem_gt()
    pred[:, 8:20] = 0
    pred[:4, :] = 2
    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    evaluator.process([d], [_sem_seg_output(pred)])
    res = evaluator.evaluate()["sem_seg"]
    assert res["IoU-c0"] == pytest.approx(40.0)
    assert res["IoU-c1"] == pytest.approx(50.0)
    assert res["IoU-c2"] == pytest.approx(100.0)
    assert res["mIoU"] == pytest.approx(100 * 1.9 / 3)
    assert res["fwIoU"] == pytest.approx(65.0)
    assert res["pACC"] == pytest.approx(75.0)
    assert res["mACC"] == pytest.approx(100 * 2.5 / 3)
    assert res["ACC-c1"] == pytest.approx(50.0)


# --------------------------------------------------------------------------------------------
# COCO panoptic
# --------------------------------------------------------------------------------------------
PAN_CATEGORIES = [
    {"id": 1, "name": "cat_a", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "cat_b", "isthing": 1, "color": [119, 11, 32]},
    {"id": 3, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 4, "name": "grass", "isthing": 0, "color": [107, 142, 35]},
]
# segment id -> (category id, rows, cols), painted in this order
PAN_SEGMENTS = {
    11: (3, slice(0, 16), slice(0, 47)),  # sky
    12: (4, slice(16, 32), slice(0, 47)),  # grass
    13: (1, slice(4, 12), slice(4, 16)),  # cat_a #1, 96 px
    14: (1, slice(18, 28), slice(20, 32)),  # cat_a #2, 120 px
    15: (2, slice(18, 28), slice(34, 46)),  # cat_b, 120 px
}  # column 47 stays 0: VOID


def _pan_gt_ids():
    ids = np.zeros((H, W), dtype=np.int64)
    for sid, (_, rows, cols) in PAN_SEGMENTS.items():
        ids[rows, cols] = sid
    return ids


@pytest.fixture
def panoptic_dataset(tmp_path, register_dataset, helpers):
    from panopticapi.utils import id2rgb

    img_dir, pan_dir = tmp_path / "images", tmp_path / "panoptic"
    img_dir.mkdir()
    pan_dir.mkdir()
    helpers.write_rgb(img_dir / "000001.jpg", _image(1))
    ids = _pan_gt_ids()
    Image.fromarray(id2rgb(ids)).save(pan_dir / "000001.png")
    segments_info = []
    for sid, (cat, _, _) in PAN_SEGMENTS.items():
        ys, xs = np.nonzero(ids == sid)
        segments_info.append(
            {
                "id": sid,
                "category_id": cat,
                "iscrowd": 0,
                "area": int(len(ys)),
                "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
            }
        )
    pan_json = tmp_path / "panoptic.json"
    pan_json.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "000001.jpg", "height": H, "width": W}],
                "annotations": [
                    {"image_id": 1, "file_name": "000001.png", "segments_info": segments_info}
                ],
                "categories": PAN_CATEGORIES,
            }
        )
    )
    thing_ids = [c["id"] for c in PAN_CATEGORIES if c["isthing"]]
    meta = {
        "thing_classes": [c["name"] for c in PAN_CATEGORIES if c["isthing"]],
        "stuff_classes": [c["name"] for c in PAN_CATEGORIES],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, cid in enumerate(thing_ids)},
        # "standard" panoptic format: stuff ids cover every category, contiguous
        "stuff_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(PAN_CATEGORIES)},
    }

    def _register(name):
        register_coco_panoptic(name, meta, str(img_dir), str(pan_dir), str(pan_json))

    return register_dataset("d2test_panoptic", _register)


def _panoptic_output(ids, segments):
    """segments: {segment id: (contiguous category id, isthing)}"""
    info = [{"id": sid, "category_id": c, "isthing": t} for sid, (c, t) in segments.items()]
    return {"panoptic_seg": (torch.as_tensor(ids, dtype=torch.int32), info)}


def test_panoptic_dataset_loads_in_standard_format(panoptic_dataset):
    (d,) = DatasetCatalog.get(panoptic_dataset)
    assert d["image_id"] == 1 and os.path.isfile(d["pan_seg_file_name"])
    by_id = {s["id"]: s for s in d["segments_info"]}
    # things -> contiguous thing ids; stuff -> contiguous ids over all categories
    assert (by_id[13]["category_id"], by_id[13]["isthing"]) == (0, True)
    assert (by_id[15]["category_id"], by_id[15]["isthing"]) == (1, True)
    assert (by_id[12]["category_id"], by_id[12]["isthing"]) == (3, False)


def test_panoptic_evaluator_perfect(panoptic_dataset, tmp_path):
    from panopticapi.utils import rgb2id

    (d,) = DatasetCatalog.get(panoptic_dataset)
    gt_ids = rgb2id(np.asarray(Image.open(d["pan_seg_file_name"]), dtype=np.uint32))
    assert np.array_equal(gt_ids, _pan_gt_ids())
    # the ground truth, renumbered, is the prediction
    pred_ids = np.zeros_like(gt_ids)
    segments = {}
    for new_id, s in enumerate(d["segments_info"], start=1):
        pred_ids[gt_ids == s["id"]] = new_id
        segments[new_id] = (s["category_id"], s["isthing"])
    evaluator = COCOPanopticEvaluator(panoptic_dataset, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    evaluator.process([d], [_panoptic_output(pred_ids, segments)])
    res = evaluator.evaluate()["panoptic_seg"]
    for key in ("PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"):
        assert res[key] == pytest.approx(100.0), key
    saved = json.loads((tmp_path / "out" / "predictions.json").read_text())
    # contiguous ids were mapped back to the dataset's category ids
    assert sorted(s["category_id"] for s in saved["annotations"][0]["segments_info"]) == [
        1, 1, 2, 3, 4,
    ]


def test_panoptic_evaluator_known_error(panoptic_dataset):
    """cat_a #2 (120 px) is predicted as grass.

    cat_a: TP 1 (IoU 1), FN 1 -> PQ = SQ*RQ = 1 * 1/(1 + 0.5) = 2/3
    grass: gt 752 - 2*120 = 512 px, predicted 632 px -> IoU 512/632 = 64/79, RQ 1
    sky, cat_b: 1.
    """
    (d,) = DatasetCatalog.get(panoptic_dataset)
    ids = _pan_gt_ids()
    ids[ids == 14] = 12
    # contiguous: cat_a 0, cat_b 1 (things); sky 2, grass 3 (stuff, over all categories)
    segments = {11: (2, False), 12: (3, False), 13: (0, True), 15: (1, True)}
    evaluator = COCOPanopticEvaluator(panoptic_dataset)
    evaluator.reset()
    evaluator.process([d], [_panoptic_output(ids, segments)])
    res = evaluator.evaluate()["panoptic_seg"]
    g = 64 / 79
    assert res["PQ"] == pytest.approx(100 * (2 / 3 + 1 + 1 + g) / 4)
    assert res["SQ"] == pytest.approx(100 * (1 + 1 + 1 + g) / 4)
    assert res["RQ"] == pytest.approx(100 * (2 / 3 + 1 + 1 + 1) / 4)
    assert res["PQ_th"] == pytest.approx(100 * 5 / 6)
    assert res["SQ_th"] == pytest.approx(100.0)
    assert res["RQ_th"] == pytest.approx(100 * 5 / 6)
    assert res["PQ_st"] == pytest.approx(100 * (1 + g) / 2)
    assert res["SQ_st"] == pytest.approx(100 * (1 + g) / 2)
    assert res["RQ_st"] == pytest.approx(100.0)


# --------------------------------------------------------------------------------------------
# COCO instances and LVIS
# --------------------------------------------------------------------------------------------
# (image id, category id, polygon): triangles and rectangles with integer vertices
INSTANCES = [
    (1, 1, [4, 4, 20, 4, 4, 20]),  # cat_a, triangle
    (1, 1, [26, 6, 44, 6, 44, 18, 26, 18]),  # cat_a, rectangle
    (1, 3, [6, 22, 30, 22, 30, 30, 6, 30]),  # cat_b
    (2, 3, [10, 2, 40, 2, 25, 28]),  # cat_b, triangle
]


def _instances_json(tmp_path, helpers, lvis=False):
    img_dir = tmp_path / "val2017"
    img_dir.mkdir(exist_ok=True)
    images = []
    for image_id in (1, 2):
        fname = f"{image_id:06d}.jpg"
        helpers.write_rgb(img_dir / fname, _image(image_id))
        img = {"id": image_id, "file_name": fname, "height": H, "width": W}
        if lvis:
            img["coco_url"] = f"http://images.cocodataset.org/val2017/{fname}"
            img["neg_category_ids"] = [2]
            img["not_exhaustive_category_ids"] = []
        images.append(img)
    annotations = []
    for ann_id, (image_id, cat, poly) in enumerate(INSTANCES, start=1):
        rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
        xs, ys = poly[0::2], poly[1::2]
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": cat,  # LVIS: ids 1..K, here cat_a 1 and cat_b 3
                "segmentation": [[float(v) for v in poly]],
                "area": float(mask_util.area(rle)),
                "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                "iscrowd": 0,
            }
        )
    if lvis:
        # LVIS: ids 1..K; frequency groups r/c/f; per-image negative / not-exhaustive lists
        categories = [
            {"id": 1, "name": "cat_a", "synonyms": ["cat_a"], "frequency": "f",
             "image_count": 1, "instance_count": 2, "def": "a"},
            {"id": 2, "name": "cat_c", "synonyms": ["cat_c"], "frequency": "r",
             "image_count": 0, "instance_count": 0, "def": "c"},
            {"id": 3, "name": "cat_b", "synonyms": ["cat_b"], "frequency": "c",
             "image_count": 2, "instance_count": 2, "def": "b"},
        ]
    else:
        categories = [{"id": 1, "name": "cat_a"}, {"id": 3, "name": "cat_b"}]
    path = tmp_path / ("lvis.json" if lvis else "instances.json")
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return str(path), str(img_dir)


@pytest.fixture
def coco_dataset(tmp_path, register_dataset, helpers):
    json_file, img_dir = _instances_json(tmp_path, helpers)
    return register_dataset(
        "d2test_coco", lambda name: register_coco_instances(name, {}, json_file, img_dir)
    )


def _gt_as_predictions(dataset_dicts, drop=()):
    """Detectron2 model outputs made of the ground truth (scores 1.0), minus annotation ids
    in `drop` (0-based positions in INSTANCES)."""
    outputs = []
    k = 0
    for d in dataset_dicts:
        annos = []
        for a in d["annotations"]:
            if k not in drop:
                annos.append(a)
            k += 1
        gt = annotations_to_instances(annos, (d["height"], d["width"]), mask_format="bitmask")
        pred = Instances((d["height"], d["width"]))
        pred.pred_boxes = gt.gt_boxes
        pred.scores = torch.ones(len(gt))
        pred.pred_classes = gt.gt_classes
        pred.pred_masks = gt.gt_masks.tensor
        outputs.append({"instances": pred})
    return outputs


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    evaluator.process(inputs, outputs)
    return evaluator.evaluate()


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_coco_evaluator_perfect(coco_dataset, tmp_path, use_fast_impl):
    inputs = DatasetCatalog.get(coco_dataset)
    meta = MetadataCatalog.get(coco_dataset)
    assert meta.thing_classes == ["cat_a", "cat_b"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 3: 1}
    assert [len(d["annotations"]) for d in inputs] == [3, 1]
    evaluator = COCOEvaluator(
        coco_dataset, distributed=False, output_dir=str(tmp_path / "out"),
        use_fast_impl=use_fast_impl,
    )
    res = _run(evaluator, inputs, _gt_as_predictions(inputs))
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "AP-cat_a", "AP-cat_b"):
            assert res[task][key] == pytest.approx(100.0), (task, key)
    saved = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert sorted(r["category_id"] for r in saved) == [1, 1, 3, 3]  # mapped back to json ids


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_coco_evaluator_known_error(coco_dataset, use_fast_impl):
    """One of the two cat_a instances is missed: cat_a reaches recall 0.5 at precision 1, so
    at each IoU threshold its AP = 51/101 (recall thresholds 0.00..0.50 of 101); cat_b 1."""
    inputs = DatasetCatalog.get(coco_dataset)
    evaluator = COCOEvaluator(coco_dataset, distributed=False, use_fast_impl=use_fast_impl)
    res = _run(evaluator, inputs, _gt_as_predictions(inputs, drop={1}))
    for task in ("bbox", "segm"):
        assert res[task]["AP-cat_a"] == pytest.approx(100 * 51 / 101)
        assert res[task]["AP-cat_b"] == pytest.approx(100.0)
        for key in ("AP", "AP50", "AP75"):
            assert res[task][key] == pytest.approx(100 * (1 + 51 / 101) / 2), (task, key)


@pytest.fixture
def lvis_dataset(tmp_path, register_dataset, helpers):
    json_file, img_dir = _instances_json(tmp_path, helpers, lvis=True)
    # detectron2 joins image_root and the split folder of `coco_url` by string concatenation
    image_root = str(tmp_path) + os.sep

    def _register(name):
        # load_lvis_json without a dataset name: 1-based LVIS ids -> 0-based contiguous ids
        DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="lvis",
            thing_classes=["cat_a", "cat_c", "cat_b"],
        )

    return register_dataset("d2test_lvis", _register)


def test_lvis_json_loads(lvis_dataset):
    dicts = DatasetCatalog.get(lvis_dataset)
    assert [d["image_id"] for d in dicts] == [1, 2]
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    assert dicts[0]["neg_category_ids"] == [2]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 0, 2]
    assert dicts[0]["annotations"][1]["bbox"] == [26, 6, 18, 12]
    assert dicts[0]["annotations"][1]["bbox_mode"] == BoxMode.XYWH_ABS


def test_lvis_evaluator_perfect(lvis_dataset, tmp_path):
    inputs = DatasetCatalog.get(lvis_dataset)
    evaluator = LVISEvaluator(lvis_dataset, distributed=False, output_dir=str(tmp_path / "out"))
    res = _run(evaluator, inputs, _gt_as_predictions(inputs))
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            assert res[task][key] == pytest.approx(100.0), (task, key)


def test_lvis_evaluator_known_error(lvis_dataset):
    """As for COCO: cat_a at recall 0.5 -> AP 51/101; cat_b 1; cat_c (no ground truth, only a
    negative category) does not count."""
    inputs = DatasetCatalog.get(lvis_dataset)
    evaluator = LVISEvaluator(lvis_dataset, distributed=False)
    res = _run(evaluator, inputs, _gt_as_predictions(inputs, drop={1}))
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75"):
            assert res[task][key] == pytest.approx(100 * (1 + 51 / 101) / 2), (task, key)
