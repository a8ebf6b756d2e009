#!/usr/bin/env python
"""Open-vocabulary segmentation of your images with your own vocabulary.

    python demo/demo.py --config-file configs/coco/maskclip_vitl14_336.yaml \
        --input photos/ img.jpg 'more/*.png' --output out/ \
        --vocab "toy rabbit, real rabbit; sky; grass" --task panoptic \
        --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --backend onnx --onnx-model model.onnx --input img.jpg --vocab "sky; grass"

Semicolons separate classes, commas separate synonyms of one class. For every image the demo
writes a PNG drawn by Detectron2's Visualizer and a JSON of the segments. Without --input it
runs on photographs that ship with scikit-image.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # demo/predictor.py

from detectron2.utils.logger import setup_logger  # noqa: E402

from maskclip_d2.config import get_maskclip_cfg  # noqa: E402
from maskclip_d2.utils import atomic_write  # noqa: E402
from maskclip_d2.predictor import TASKS, Predictor, parse_vocabulary, read_rgb_image  # noqa: E402
from predictor import VisualizationDemo  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (pytorch backend)")
    parser.add_argument(
        "--backend", choices=["pytorch", "onnx"], default="pytorch",
        help="onnx: run a model exported by tools/export_onnx.py with ONNX Runtime (its config "
        "is stored in the file; --opts may change post-processing keys)",
    )
    parser.add_argument("--onnx-model", metavar="FILE", help="the .onnx file of --backend onnx")
    parser.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument("--output", default="output/demo", help="output folder (or file, for one image)")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", help='classes: "toy rabbit, real rabbit; sky; grass"')
    vocab.add_argument("--vocab-file", help="a file with one class per line (commas: synonyms)")
    parser.add_argument(
        "--task", default="panoptic",
        help="panoptic, semantic or instance; several separated by commas, or 'all'",
    )
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument(
        "--proposals", choices=["mask2former", "maskrcnn"],
        help="proposal network (MODEL.MASKCLIP.PROPOSAL_NETWORK); the config's model keys must "
        "describe it (maskrcnn: configs/coco/maskclip_maskrcnn_vitl14_336.yaml). 'gt' needs "
        "annotations, so it is for evaluation with train_net.py, not for the demo",
    )
    parser.add_argument(
        "--max-image-size", type=int, default=4096,
        help="larger images are scaled down to this longest side before anything else",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def parse_tasks(text):
    tasks = list(TASKS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown --task {text!r}: choose from {', '.join(TASKS)} (or 'all')")
    return tasks


def read_vocabulary(args):
    if args.vocab_file:
        with open(args.vocab_file) as f:
            return parse_vocabulary(f.read())
    if args.vocab is not None:
        return parse_vocabulary(args.vocab)
    return None


def expand_inputs(patterns):
    """Files from paths, folders (their images, sorted) and glob patterns, in order."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            files += sorted(
                os.path.join(pattern, f) for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif any(c in pattern for c in "*?["):
            files += sorted(glob.glob(os.path.expanduser(pattern)))
        else:
            files.append(pattern)
    return files


def sample_photos(folder):
    """scikit-image's photographs written as PNGs: the demo's embedded default input."""
    import skimage.data

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in SAMPLE_PHOTOS:
        path = os.path.join(folder, f"{name}.png")
        if not os.path.exists(path):
            Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
        paths.append(path)
    return paths


def setup_cfg(args):
    cfg = get_maskclip_cfg(args.config_file, args.opts)
    if args.proposals:
        cfg.MODEL.MASKCLIP.PROPOSAL_NETWORK = args.proposals
    cfg.freeze()
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    # Bad input is refused before the model loads.
    try:
        tasks = parse_tasks(args.task)
        vocabulary = read_vocabulary(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.backend == "onnx":
        if not args.onnx_model:
            print("error: --backend onnx needs --onnx-model FILE (see tools/export_onnx.py)", file=sys.stderr)
            return 2
        if not os.path.isfile(args.onnx_model):
            print(f"error: ONNX model {args.onnx_model} not found; create it with "
                  f"tools/export_onnx.py --output {args.onnx_model}", file=sys.stderr)
            return 2
        if args.config_file or args.proposals:
            print("error: --backend onnx reads the config stored in --onnx-model; drop "
                  "--config-file / --proposals", file=sys.stderr)
            return 2
    elif not args.config_file:
        print("error: --config-file is required (or --backend onnx --onnx-model FILE)", file=sys.stderr)
        return 2
    elif not os.path.isfile(args.config_file):
        print(f"error: config file {args.config_file} not found", file=sys.stderr)
        return 2

    setup_logger(name="maskclip_d2")
    if args.backend == "onnx":
        from maskclip_d2.deploy import ONNXPredictor

        predictor = ONNXPredictor(args.onnx_model, opts=args.opts)
        cfg = predictor.cfg
    else:
        cfg = setup_cfg(args)
        predictor = None
    if cfg.MODEL.CLIP.WEIGHTS == "random":
        print(
            "NOTE: this config uses RANDOM CLIP weights (MODEL.CLIP.WEIGHTS random): the demo "
            "checks that the pipeline runs; its labels and scores mean nothing."
        )

    single_file_output = args.output.lower().endswith(".png")
    out_dir = os.path.dirname(args.output) if single_file_output else args.output
    os.makedirs(out_dir or ".", exist_ok=True)
    inputs = expand_inputs(args.input) if args.input else sample_photos(os.path.join(out_dir, "inputs"))
    if single_file_output and len(inputs) != 1:
        print(f"error: --output {args.output} is a file but there are {len(inputs)} inputs", file=sys.stderr)
        return 2
    if not inputs:
        print("error: --input matched no image", file=sys.stderr)
        return 2

    predictor = predictor or Predictor(cfg)
    if vocabulary is None:
        vocabulary = predictor.vocabulary
    demo = VisualizationDemo(predictor, args.confidence_threshold)
    failures = 0
    for path in tqdm(inputs, desc="images", unit="img", disable=len(inputs) < 2):
        start = time.perf_counter()
        try:
            rgb = read_rgb_image(path)
        except ValueError as err:
            tqdm.write(f"skipped {err}")
            failures += 1
            continue
        note = ""
        if max(rgb.shape[:2]) > args.max_image_size:
            scale = args.max_image_size / max(rgb.shape[:2])
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
            note = f" (scaled down to {size[0]}x{size[1]})"
        _, drawn, segments = demo.run_on_image(rgb, vocabulary, tasks)
        stem = os.path.splitext(os.path.basename(path))[0]
        for task in tasks:
            if single_file_output:
                png = args.output
            else:
                png = os.path.join(out_dir, f"{stem}.png" if len(tasks) == 1 else f"{stem}_{task}.png")
            with atomic_write(png) as tmp:
                Image.fromarray(drawn[task]).save(tmp, format="PNG")
        record = {"image": path, "vocabulary": vocabulary, **{task: segments[task] for task in tasks}}
        json_path = os.path.splitext(args.output)[0] + ".json" if single_file_output else os.path.join(out_dir, f"{stem}.json")
        with atomic_write(json_path) as tmp, open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        counts = ", ".join(
            f"{task}: {len(segments[task])} segments ({', '.join(sorted({s['class'].split(',')[0] for s in segments[task]})) or '-'})"
            for task in tasks
        )
        tqdm.write(f"{path}{note}: {counts} in {time.perf_counter() - start:.2f}s")
    print(f"wrote {len(inputs) - failures} result(s) to {out_dir or '.'}" + (f"; {failures} input(s) skipped" if failures else ""))
    return 1 if failures == len(inputs) else 0


if __name__ == "__main__":
    sys.exit(main())
