"""Detectron2's fast COCO evaluation slot (``COCOeval_opt``, compiled C++ upstream): here
hotcoco (Rust) when installed, else pycocotools. Either way it must give pycocotools' numbers
exactly, and fail on malformed input the way pycocotools fails (the check of upstream's
``test_fast_eval``, each API given its own copy of the input)."""
import contextlib
import copy
import io
import json
import time

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.evaluation import fast_eval_api
from detectron2.evaluation.fast_eval_api import COCOeval_opt

H, W = 48, 64


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_like(seed=0, num_images=12, category_ids=(1, 3, 7, 90)):
    """COCO-format ground truth (polygons and RLE, crowds) and mask results around it."""
    rng = np.random.RandomState(seed)
    images, annotations, results = [], [], []
    for i in range(num_images):
        images.append({"id": 100 + i, "file_name": f"{i:06d}.jpg", "height": H, "width": W})
        for _ in range(rng.randint(1, 6)):
            y, x = rng.randint(0, H - 8), rng.randint(0, W - 8)
            h, w = rng.randint(2, H - y), rng.randint(2, W - x)
            mask = np.zeros((H, W), dtype=bool)
            mask[y:y + h, x:x + w] = True
            category = int(rng.choice(category_ids))
            ann = {"id": len(annotations) + 1, "image_id": 100 + i, "category_id": category,
                   "area": float(h * w), "bbox": [float(x), float(y), float(w), float(h)],
                   "iscrowd": int(rng.rand() < 0.1)}
            if rng.rand() < 0.5 and not ann["iscrowd"]:
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            else:
                ann["segmentation"] = _rle(mask)
            annotations.append(ann)
            for _ in range(rng.randint(0, 3)):
                moved = np.roll(mask, rng.randint(-5, 6), axis=rng.randint(2))
                ys, xs = np.nonzero(moved)
                results.append({
                    "image_id": 100 + i, "score": float(rng.rand()),
                    "category_id": category if rng.rand() < 0.8 else int(rng.choice(category_ids)),
                    "segmentation": _rle(moved),
                    "bbox": [float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                })
    categories = [{"id": c, "name": f"class{c}", "supercategory": "s"} for c in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def run(evaluator_class, gt, results, iou_type, params=None):
    """(eval dict, stats) of evaluate + accumulate + summarize, or the exception raised."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
            ev = evaluator_class(coco_gt, coco_dt, iou_type)
            for key, value in (params or {}).items():
                setattr(ev.params, key, value)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        return ev.eval, ev.stats
    except Exception as err:  # noqa: BLE001
        return err


def assert_same(reference, fast, name):
    if isinstance(reference, Exception) or isinstance(fast, Exception):
        assert type(fast) is type(reference), f"{name}: {reference!r} vs {fast!r}"
        return
    for key in ("precision", "recall", "scores"):
        assert np.array_equal(reference[0][key], fast[0][key]), f"{name}: {key}"
    assert np.array_equal(reference[1], fast[1]), f"{name}: stats"


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_the_fast_evaluator_gives_pycocotools_numbers_bit_for_bit(iou_type):
    gt, results = coco_like()
    experiments = {
        "full": {}, "max_dets": {"maxDets": [1, 5, 20]}, "some_images": {"imgIds": [101, 103, 100]},
        "no_categories": {"useCats": 0}, "iou_50": {"iouThrs": np.array([0.5])},
    }
    for name, params in experiments.items():
        reference = run(COCOeval, gt, results, iou_type, params)
        assert not isinstance(reference, Exception), reference
        if name == "full":
            assert 0 < reference[1][0] < 1  # a real, non-trivial AP
        assert_same(reference, run(COCOeval_opt, gt, results, iou_type, params), name)


def test_the_fast_evaluator_fails_on_malformed_input_as_pycocotools_does():
    gt, results = coco_like(seed=1, num_images=4)
    experiments = {"empty_dt": (gt, []), "empty_gt": ({**gt, "annotations": []}, results)}
    for field in ("id", "image_id", "category_id", "score", "area", "iscrowd", "bbox", "segmentation"):
        bad_gt = copy.deepcopy(gt)
        for ann in bad_gt["annotations"]:
            ann.pop(field, None)
        bad_dt = [{k: v for k, v in r.items() if k != field} for r in results]
        experiments[f"omit_gt_{field}"] = (bad_gt, results)
        experiments[f"omit_dt_{field}"] = (gt, bad_dt)
    for name, (g, r) in experiments.items():
        for iou_type in ("bbox", "segm"):
            assert_same(run(COCOeval, g, r, iou_type), run(COCOeval_opt, g, r, iou_type),
                         f"{name}/{iou_type}")


def test_the_fast_evaluator_is_hotcoco_when_installed():
    """The backend really is the fast one (the numbers above are then hotcoco's)."""
    hotcoco = pytest.importorskip("hotcoco")
    assert fast_eval_api.hotcoco is hotcoco
    gt, results = coco_like(seed=2, num_images=2)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval_opt(coco_gt, coco_gt.loadRes(results), "segm")
        ev.evaluate()
    assert ev._hotcoco_result is not None and ev.evalImgs == []
