#!/usr/bin/env python
"""Time Segment Anything as MaskCLIP's proposal source against the paper's R50 Mask2Former.

Both models come from one config (default: the paper's ViT-L/14@336px MaskCLIP), random
weights throughout (timings do not depend on the values), in one process; per repeat the
four measurements run interleaved, and the fastest of ``--repeats`` (after a warm-up) is
reported:

* ``proposals``: the proposal stage alone, on the model's input of one photograph
  (scikit-image's coffee, resized by ``INPUT.MIN_SIZE_TEST``): Mask2Former's forward and
  top-100 selection, or SAM ViT-B (1024 px input) with its automatic mask generator;
* ``whole``: the whole model (proposals, MaskCLIP encoder, classification over ``--classes``
  names, the three post-processing tasks).

A random SAM's masks fail SAM's quality filters (predicted IoU 0.88, stability 0.95) and all
span about the whole image (box NMS keeps one), so with SAM's defaults the later stages would
see almost no masks. ``--sam-filters off`` (the default) turns the two filters and the NMS off
so that MaskCLIP gets NUM_PROPOSALS (100) masks from SAM, as many as from Mask2Former (the
counts are printed); the generator's work per point (the network, mask up-sampling, stability
scores) does not depend on them, the RLE encoding of surviving masks grows with their number
(all 3 x points^2 survive here: an upper bound). ``--sam-filters on`` keeps SAM's defaults.

Usage:
  python benchmarks/benchmark_sam.py                       # 32 x 32 points, 2 repeats
  python benchmarks/benchmark_sam.py --points-per-side 16 --threads 2
"""
import argparse
import os
import time

import numpy as np
import torch

from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.config import shapes_only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs/coco/maskclip_vitl14_336.yaml"))
    parser.add_argument("--sam-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--sam-filters", default="off", choices=["off", "on"])
    parser.add_argument("--classes", default="ade20k_150", help="a vocabulary preset")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def build(args, proposals):
    cfg = shapes_only(get_maskclip_cfg(args.config_file, ["MODEL.DEVICE", args.device]))
    if proposals == "sam":
        cfg.MODEL.MASKCLIP.PROPOSAL_NETWORK = "sam"
        cfg.MODEL.MASKCLIP.SAM.MODEL_TYPE = args.sam_type
        cfg.MODEL.MASKCLIP.SAM.POINTS_PER_SIDE = args.points_per_side
        if args.sam_filters == "off":
            cfg.MODEL.MASKCLIP.SAM.PRED_IOU_THRESH = 0.0
            cfg.MODEL.MASKCLIP.SAM.STABILITY_SCORE_THRESH = 0.0
            cfg.MODEL.MASKCLIP.SAM.BOX_NMS_THRESH = 1.0
    torch.manual_seed(0)
    predictor = Predictor(cfg)
    predictor.set_vocabulary(args.classes)
    return predictor


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import skimage.data

    photo = skimage.data.coffee()
    predictors = {name: build(args, name) for name in ("mask2former", "sam")}
    inputs = predictors["sam"].inputs(photo)
    print(f"device {args.device}, {torch.get_num_threads()} threads; photo {photo.shape[:2]} -> model input "
          f"{tuple(inputs['image'].shape[-2:])}; SAM {args.sam_type}, {args.points_per_side}^2 points, "
          f"quality filters {args.sam_filters}; vocabulary {args.classes}")
    times = {(n, stage): [] for n in predictors for stage in ("proposals", "whole")}
    counts = {}
    with torch.no_grad():
        for repeat in range(args.repeats + 1):  # the first is a warm-up
            for name, predictor in predictors.items():
                model = predictor.model
                size = model.clip_resolution
                seconds, (logits, _) = timed(lambda: model.proposal_network(
                    [inputs], size, model.padded_size([inputs])))
                counts[name] = logits.shape[1]
                print(f"  {'run' if repeat else 'warm-up'} {name} proposals {seconds:.2f}s ({counts[name]} masks)", flush=True)
                if repeat:
                    times[name, "proposals"].append(seconds)
            for name, predictor in predictors.items():
                seconds, _ = timed(lambda: predictor(photo))
                print(f"  {'run' if repeat else 'warm-up'} {name} whole model {seconds:.2f}s", flush=True)
                if repeat:
                    times[name, "whole"].append(seconds)
    best = {key: min(values) for key, values in times.items()}
    print(f"{'':12s} {'proposals s':>12s} {'whole s':>9s} {'masks':>6s}")
    for name in predictors:
        print(f"{name:12s} {best[name, 'proposals']:12.2f} {best[name, 'whole']:9.2f} {counts[name]:6d}")
    print(f"ratio SAM / Mask2Former: proposals {best['sam', 'proposals'] / best['mask2former', 'proposals']:.2f}x, "
          f"whole model {best['sam', 'whole'] / best['mask2former', 'whole']:.2f}x "
          f"(fastest of {args.repeats}; all: {{{', '.join(f'{k[0]}/{k[1]}: {np.round(v, 2).tolist()}' for k, v in times.items())}}})")


if __name__ == "__main__":
    main()
