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
    parser.add_argument(
        "--dtypes", action="store_true",
        help="also time PyTorch in bfloat16 (MODEL.MASKCLIP.INFERENCE_DTYPE) and ONNX Runtime on the "
        "int8 graph (maskclip_d2/quantization.py), with their differences to PyTorch float32",
    )
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
        if args.dtypes:
            from maskclip_d2.quantization import int8_path, quantize_int8

            int8_predictor = ONNXPredictor(quantize_int8(path, int8_path(path)), num_threads=args.threads)
            int8_model = int8_predictor.model

            def bf16_predict():
                model.inference_dtype = "bfloat16"
                try:
                    with torch.no_grad():
                        return model.predict([inputs], vocabulary)
                finally:
                    model.inference_dtype = "float32"

            for name, other in (("pytorch_bfloat16", bf16_predict()),
                                ("onnxruntime_int8", int8_model.predict([inputs], vocabulary))):
                other_masks = other["refined_masks"][-1] if other["refined_masks"] else other["mask_logits"]
                diffs[f"{name}_class_logits"] = float((ours["class_logits"] - other["class_logits"]).abs().max())
                diffs[f"{name}_mask_logits"] = float((masks - other_masks).abs().max())
                diffs[f"{name}_class_argmax_agreement"] = float(
                    (ours["class_logits"].argmax(-1) == other["class_logits"].argmax(-1)).float().mean())
            runs[("predict", "pytorch_bfloat16")] = bf16_predict
            runs[("predict", "onnxruntime_int8")] = lambda: int8_model.predict([inputs], vocabulary)
            sizes_mb = {"float32": os.path.getsize(path) / 2**20, "int8": os.path.getsize(int8_path(path)) / 2**20}
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
    if args.dtypes:
        base = best[("predict", "pytorch")]
        for name in ("pytorch_bfloat16", "onnxruntime_int8"):
            print(f"  predict {name}: {best[('predict', name)]:.3f}s (x{best[('predict', name)] / base:.2f} of "
                  f"PyTorch float32); vs PyTorch float32: class logits max diff {diffs[name + '_class_logits']:.1e}, "
                  f"mask logits {diffs[name + '_mask_logits']:.1e}, class argmax equal for "
                  f"{100 * diffs[name + '_class_argmax_agreement']:.1f}% of masks")
        print(f"  image graph: float32 {sizes_mb['float32']:.1f} MB, int8 {sizes_mb['int8']:.1f} MB")
    if args.json:
        print(json.dumps({
            "config": args.config_file, "threads": args.threads, "export_s": export_s,
            **{f"{stage}_{backend}_s": value for (stage, backend), value in best.items()},
            **{f"max_abs_diff_{key}": value for key, value in diffs.items()},
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
