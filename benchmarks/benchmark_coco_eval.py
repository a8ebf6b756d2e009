#!/usr/bin/env python
"""Mask AP at scale: Detectron2's fast COCO evaluation slot (``COCOeval_opt``: hotcoco when
installed) against pycocotools, and hotcoco's LVIS evaluation against the ``lvis`` package,
on a generated LVIS-like dataset, in one run. Prints times, the speed ratios and whether
every number is identical.

    python benchmarks/benchmark_coco_eval.py                       # 5000 images, 1203 classes
    python benchmarks/benchmark_coco_eval.py --images 1000 --skip-lvis

The dataset: ``--images`` images of ``--height`` x ``--width`` with ``--objects`` ground-truth
masks each (rectangles and ellipses, some crowds) over ``--classes`` categories (LVIS's 1203
by default, frequency groups r / c / f as LVIS has them), and ``--detections`` scored
results per image around them (shifted copies, wrong classes, noise). Not a test: a
measurement (timings on a shared machine vary; the ratio of one run is what to read).
"""
import argparse
import contextlib
import copy
import io
import os
import sys
import tempfile
import time

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def generate(args):
    """(ground truth dict in LVIS / COCO format, results list)."""
    rng = np.random.RandomState(args.seed)
    h, w = args.height, args.width
    yy, xx = np.mgrid[:h, :w]
    frequency = rng.choice(["r", "c", "f"], size=args.classes, p=[0.3, 0.4, 0.3])
    categories = [{"id": c + 1, "name": f"class_{c + 1}", "frequency": str(frequency[c]),
                   "image_count": 1, "instance_count": 1, "synset": f"s{c}", "synonyms": [f"class_{c + 1}"]}
                  for c in range(args.classes)]
    images, annotations, results = [], [], []
    for i in range(args.images):
        image_id = i + 1
        present = rng.choice(args.classes, size=max(1, args.objects // 2), replace=False) + 1
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id:012d}.jpg",
                       "coco_url": f"http://x/{image_id:012d}.jpg",
                       "neg_category_ids": [int(c) for c in rng.choice(args.classes, 3) + 1 if c + 1 not in present],
                       "not_exhaustive_category_ids": []})
        masks = []
        for _ in range(args.objects):
            cy, cx = rng.randint(0, h), rng.randint(0, w)
            ry, rx = rng.randint(3, h // 3), rng.randint(3, w // 3)
            if rng.rand() < 0.5:
                mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            else:
                mask = (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
            category = int(rng.choice(present))
            rle = _rle(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": rle, "area": float(mask.sum()),
                                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                                "iscrowd": int(rng.rand() < 0.02)})
            masks.append((mask, category))
        for _ in range(args.detections):
            mask, category = masks[rng.randint(len(masks))]
            if rng.rand() < 0.2:
                category = int(rng.randint(args.classes) + 1)
            moved = np.roll(mask, (rng.randint(-6, 7), rng.randint(-6, 7)), axis=(0, 1))
            if not moved.any():
                continue
            rle = _rle(moved)
            results.append({"image_id": image_id, "category_id": category, "segmentation": rle,
                            "bbox": [float(v) for v in mask_util.toBbox(rle)],
                            "score": float(rng.rand())})
    gt = {"images": images, "annotations": annotations, "categories": categories,
          "info": {}, "licenses": []}
    return gt, results


def quiet():
    return contextlib.redirect_stdout(io.StringIO())


def coco_ap(evaluator_class, gt, results):
    with quiet():
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        start = time.perf_counter()
        ev = evaluator_class(coco_gt, coco_dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        seconds = time.perf_counter() - start
    return seconds, ev


def lvis_ap(gt_path, results):
    import hotcoco
    from lvis import LVIS, LVISEval, LVISResults

    with quiet():
        lvis_gt = LVIS(gt_path)
        start = time.perf_counter()
        ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(results)), "segm")
        ev.run()
        reference_seconds = time.perf_counter() - start
        reference = dict(ev.results)

        hot_gt = hotcoco.COCO(gt_path)
        start = time.perf_counter()
        hev = hotcoco.LVISEval(hot_gt, hot_gt.load_res(copy.deepcopy(results)), "segm")
        hev.run()
        fast_seconds = time.perf_counter() - start
        fast = hev.get_results()
    return reference_seconds, reference, fast_seconds, fast


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=1203)
    parser.add_argument("--objects", type=int, default=12, help="ground-truth masks per image")
    parser.add_argument("--detections", type=int, default=50, help="results per image")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-lvis", action="store_true", help="only the COCO-protocol AP")
    args = parser.parse_args(argv)

    from detectron2.evaluation import fast_eval_api
    from detectron2.evaluation.fast_eval_api import COCOeval_opt

    backend = "hotcoco" if getattr(fast_eval_api, "hotcoco", None) is not None else "pycocotools"
    start = time.perf_counter()
    gt, results = generate(args)
    print(f"generated {len(gt['images'])} images, {len(gt['categories'])} classes, "
          f"{len(gt['annotations'])} masks, {len(results)} results in {time.perf_counter() - start:.1f}s")

    reference_seconds, reference = coco_ap(COCOeval, gt, results)
    fast_seconds, fast = coco_ap(COCOeval_opt, gt, results)
    same = all(np.array_equal(reference.eval[k], fast.eval[k]) for k in ("precision", "recall", "scores"))
    same = same and np.array_equal(reference.stats, fast.stats)
    print(f"COCO mask AP: pycocotools {reference_seconds:.1f}s, COCOeval_opt ({backend}) "
          f"{fast_seconds:.1f}s: {reference_seconds / fast_seconds:.1f}x; AP {reference.stats[0]:.4f} vs "
          f"{fast.stats[0]:.4f}; precision / recall / scores / stats identical: {same}")

    if not args.skip_lvis:
        with tempfile.TemporaryDirectory() as tmp:
            import json

            path = os.path.join(tmp, "lvis_like.json")
            with open(path, "w") as f:
                json.dump(gt, f)
            ref_s, ref, fast_s, hot = lvis_ap(path, results)
        keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
        diffs = {k: abs(ref[k] - hot[k]) for k in keys if k in hot}
        differ = {k: f"{ref[k]:.6f} vs {hot[k]:.6f}" for k, d in diffs.items() if d > 0}
        print(f"LVIS mask AP: lvis {ref_s:.1f}s, hotcoco {fast_s:.1f}s: {ref_s / fast_s:.1f}x; "
              f"AP {ref['AP']:.6f} vs {hot['AP']:.6f}; metrics that differ (lvis vs hotcoco): "
              f"{differ or 'none'}")


if __name__ == "__main__":
    main()
