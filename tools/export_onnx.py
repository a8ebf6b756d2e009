#!/usr/bin/env python
"""Export MaskCLIP to ONNX: an image graph (image + vocabulary text embeddings -> per-mask
class logits, mask logits, objectness) and a text graph (CLIP's text tower), for ONNX Runtime.

    python tools/export_onnx.py --config-file configs/tiny/maskclip_tiny.yaml --output model.onnx \
        [--opts MODEL.WEIGHTS model_final.pth ...]

writes ``model.onnx`` and ``model.text.onnx`` (each whole or not at all; a graph with over 1.5 GiB
of weights, such as one with a ViT-H/14 image tower, keeps them in ``model.onnx.data`` beside
it: move the two together), then checks them: one
photograph through PyTorch and through ONNX Runtime, each output's largest difference relative
to its scale (maskclip_d2/export_check.py) and the segments' agreement printed.
Run the result with ``demo/demo.py --backend onnx --onnx-model model.onnx`` or
``maskclip_d2.deploy.ONNXPredictor("model.onnx")``. See maskclip_d2/deploy.py for the graphs.
"""
import argparse
import importlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.utils.logger import setup_logger  # noqa: E402

from maskclip_d2.config import get_maskclip_cfg  # noqa: E402
from maskclip_d2.deploy import (  # noqa: E402
    ONNXPredictor, check_config_exportable, check_exportable, export_onnx, external_data_path,
    text_graph_path,
)
from maskclip_d2.export_check import (  # noqa: E402
    RELATIVE_TOLERANCES, compare_outputs, compare_segments, format_report,
)
from maskclip_d2.quantization import INT8_RELATIVE_TOLERANCES, int8_path, quantize_int8  # noqa: E402
from maskclip_d2.predictor import Predictor  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, help="the image graph, NAME.onnx (the text graph: NAME.text.onnx)")
    parser.add_argument("--no-check", action="store_true", help="skip the PyTorch / ONNX Runtime comparison")
    parser.add_argument(
        "--optimize", action="store_true",
        help="also run onnxscript's graph optimizer (slower export; ONNX Runtime optimizes on load anyway)",
    )
    parser.add_argument(
        "--int8", action="store_true",
        help="also write NAME.int8.onnx: ONNX Runtime's dynamic int8 quantization of the image graph "
        "(maskclip_d2/quantization.py), checked against PyTorch float32 with int8-sized tolerances",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def input_files(args, cfg):
    """The files the export reads, which it must never overwrite."""
    files = [args.config_file, cfg.MODEL.WEIGHTS, cfg.MODEL.MASKCLIP.PROPOSAL_WEIGHTS]
    if cfg.MODEL.CLIP.WEIGHTS not in ("", "random"):
        files.append(cfg.MODEL.CLIP.WEIGHTS)
    return [os.path.realpath(f) for f in files if f and os.path.exists(f)]


def check_outputs(args, cfg):
    """Bad output paths are refused before the model is built."""
    if not args.output.endswith(".onnx"):
        raise ValueError(f"--output must name an .onnx file, got {args.output}")
    inputs = input_files(args, cfg)
    for path in (args.output, external_data_path(args.output), text_graph_path(args.output),
                 int8_path(args.output)):
        if os.path.realpath(path) in inputs:
            raise ValueError(f"{path} is an input of the export; choose another --output")
        if os.path.isdir(path):
            raise ValueError(f"{path} is a folder; --output must name a file")


def check_prerequisites(args, cfg):
    """What the export needs, checked before the model is built: a config that exports
    (float32, a MaskCLIP with Mask2Former proposals) and the packages of each step."""
    check_config_exportable(cfg)
    needed = [("onnxscript", "the export", "torch.onnx's exporter")]
    if not args.no_check:
        needed.append(("onnxruntime", "the check against PyTorch (--no-check skips it)", "ONNX Runtime"))
    if args.int8:
        needed.append(("onnxruntime.quantization", "--int8", "ONNX Runtime's quantization"))
    for module, step, what in needed:
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(f"{step} needs {what} ({module}): pip install {module.split('.')[0]} "
                             "as pinned in requirements.txt") from None


def compare(cfg, model, path, tolerances=RELATIVE_TOLERANCES, rounding="float32 rounding"):
    """PyTorch against ONNX Runtime on a photograph: each output's largest difference relative
    to its scale (``maskclip_d2.export_check``) and the segments' agreement, printed. True if
    every output is within its tolerance."""
    import skimage.data

    photo = skimage.data.astronaut()
    torch_predictor = Predictor(cfg, model=model)
    onnx_predictor = ONNXPredictor(path)
    inputs = torch_predictor.inputs(photo)
    vocabulary = model.text_encoder.encode_vocabulary(model.vocabulary)
    with torch.no_grad():
        ours = model.predict([inputs], vocabulary)
    theirs = onnx_predictor.model.predict([inputs], vocabulary)
    refined = ours["refined_masks"]
    ours["mask_logits"] = refined[-1] if refined else ours["mask_logits"]
    outputs = compare_outputs(ours, theirs, tolerances)
    segments = compare_segments(
        torch_predictor(photo, task="panoptic,semantic"), onnx_predictor(photo, task="panoptic,semantic")
    )
    print(f"check of {path} on skimage's astronaut:\n{format_report(outputs, segments)}")
    within = all(r["within"] for r in outputs.values())
    if within:
        print(f"ok: ONNX Runtime's outputs equal PyTorch's up to {rounding}")
    else:
        print(f"error: ONNX Runtime's outputs differ from PyTorch's beyond {rounding} "
              "(see the TOO LARGE rows)", file=sys.stderr)
    return within


def graph_mb(path):
    """The size of a graph with its external data file, if it has one."""
    files = [path, external_data_path(path)]
    return sum(os.path.getsize(f) for f in files if os.path.isfile(f)) / 2**20


def main(argv=None):
    args = get_parser().parse_args(argv)
    if not os.path.isfile(args.config_file):
        print(f"error: config file {args.config_file} not found", file=sys.stderr)
        return 2
    setup_logger(name="maskclip_d2")
    cfg = get_maskclip_cfg(args.config_file, args.opts)
    cfg.freeze()
    try:
        check_outputs(args, cfg)
        check_prerequisites(args, cfg)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model = Predictor(cfg).model
    try:
        check_exportable(model)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    paths = export_onnx(model, cfg, args.output, optimize=args.optimize)
    print(f"wrote {paths['image_graph']} and {paths['text_graph']} in {time.perf_counter() - start:.0f}s")
    ok = args.no_check or compare(cfg, model, args.output)
    if args.int8:
        int8 = quantize_int8(args.output, int8_path(args.output))
        print(f"wrote {int8} ({graph_mb(int8):.1f} MB; float32: {graph_mb(args.output):.1f} MB)")
        if not args.no_check:
            ok = compare(cfg, model, int8, INT8_RELATIVE_TOLERANCES, "int8 quantization") and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
