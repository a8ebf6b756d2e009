#!/usr/bin/env python
"""Time MaskCLIP in PyTorch and exported to ONNX Runtime, in one run, on the CPU.

For each config: builds the model (random CLIP weights are fine: time does not depend on the
weights), exports it to a temporary folder (tools/export_onnx.py's code), then times on one
photograph, round-robin after one warm-up each, the shortest of ``--repeats``:

  predict    image -> class logits and mask logits (``MaskCLIP.predict`` vs the image graph);
  predictor  the whole ``Predictor`` call (resize, predict, post-processing: panoptic).

and prints ONNX Runtime / PyTorch time ratios (< 1: ONNX Runtime is faster). Both run with
``--threads`` threads. It also prints the largest logit difference between the two.

    python benchmarks/benchmark_onnx.py --config-file configs/tiny/maskclip_tiny.yaml
    python benchmarks/benchmark_onnx.py \
        --config-file configs/coco/maskclip_vitb16.yaml --opts MODEL.CLIP.WEIGHTS random \
        MODEL.MASKCLIP.PROPOSAL_WEIGHTS ""
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from maskclip_d2.config import get_maskclip_cfg, shapes_only  # noqa: E402
from maskclip_d2.deploy import ONNXPredictor, export_onnx  # noqa: E402
from maskclip_d2.predictor import Predictor  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--photo", default="astronaut", help="a scikit-image photograph")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON line as well")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    import skimage.data

    torch.set_num_threads(args.threads)
    cfg = shapes_only(get_maskclip_cfg(args.config_file, args.opts))
    cfg.freeze()
    torch.manual_seed(0)
    predictor = Predictor(cfg)
    model = predictor.model
    photo = getattr(skimage.data, args.photo)()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        start = time.perf_counter()
        export_onnx(model, cfg, path)
        export_s = time.perf_counter() - start
        onnx_predictor = ONNXPredictor(path, num_threads=args.threads)
        onnx_model = onnx_predictor.model

        inputs = predictor.inputs(photo)
        vocabulary = model.text_encoder.encode_vocabulary(model.vocabulary)
        with torch.no_grad():
            ours = model.predict([inputs], vocabulary)
        theirs = onnx_model.predict([inputs], vocabulary)
        masks = ours["refined_masks"][-1] if ours["refined_masks"] else ours["mask_logits"]
        diffs = {
            "class_logits": float((ours["class_logits"] - theirs["class_logits"]).abs().max()),
            "mask_logits": float((masks - theirs["mask_logits"]).abs().max()),
        }

        def torch_predict():
            with torch.no_grad():
                model.predict([inputs], vocabulary)

        runs = {
            ("predict", "pytorch"): torch_predict,
            ("predict", "onnxruntime"): lambda: onnx_model.predict([inputs], vocabulary),
            ("predictor", "pytorch"): lambda: predictor(photo, task="panoptic"),
            ("predictor", "onnxruntime"): lambda: onnx_predictor(photo, task="panoptic"),
        }
        times = {key: [] for key in runs}
        for run in runs.values():
            run()  # warm-up
        for _ in range(args.repeats):
            for key, run in runs.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)

    best = {key: min(values) for key, values in times.items()}
    height, width = inputs["image"].shape[1:]
    print(f"{args.config_file} (CLIP {cfg.MODEL.CLIP.NAME}, {cfg.MODEL.MASKCLIP.NUM_PROPOSALS} "
          f"proposals, {args.photo} resized to {height} x {width}, {args.threads} thread(s), "
          f"best of {args.repeats}); export took {export_s:.0f}s")
    for stage in ("predict", "predictor"):
        ours, theirs = best[(stage, "pytorch")], best[(stage, "onnxruntime")]
        print(f"  {stage:9s}  PyTorch {ours:.3f}s  ONNX Runtime {theirs:.3f}s  ratio ORT/PyTorch {theirs / ours:.2f}")
    print(f"  max |PyTorch - ONNX Runtime|: class logits {diffs['class_logits']:.1e}, "
          f"mask logits {diffs['mask_logits']:.1e}")
    if args.json:
        print(json.dumps({
            "config": args.config_file, "threads": args.threads, "export_s": export_s,
            **{f"{stage}_{backend}_s": value for (stage, backend), value in best.items()},
            **{f"max_abs_diff_{key}": value for key, value in diffs.items()},
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
