#!/usr/bin/env python
"""Open-vocabulary segmentation of your images with your own vocabulary.

    python demo/demo.py --config-file configs/coco/maskclip_vitl14_336.yaml \
        --input photos/ img.jpg 'more/*.png' --output out/ \
        --vocab "toy rabbit, real rabbit; sky; grass" --task panoptic \
        --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --backend onnx --onnx-model model.onnx --input img.jpg --vocab "sky; grass"

Semicolons separate classes, commas separate synonyms of one class; ``--vocab ade20k_150``
takes a benchmark's vocabulary (``maskclip_d2.data.vocabularies``) with its thing / stuff
flags. ``--stuff "sky; grass"`` marks stuff classes (one region each in panoptic output; the others are things). For every
image the demo writes a PNG drawn by Detectron2's Visualizer and a JSON of the segments, at
the image's path relative to the inputs' common folder (``a/photo.jpg`` -> ``OUT/a/photo.png``);
inputs that would share a result name keep their extension in it (``photo_jpg.png``). No
result ever replaces an input. Without --input it runs on photographs that ship with
scikit-image.
"""
import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # demo/predictor.py

from detectron2.utils.logger import setup_logger  # noqa: E402

from maskclip_d2.config import get_maskclip_cfg  # noqa: E402
from maskclip_d2.data.vocabularies import VOCABULARY_PRESETS, resolve_vocabulary  # noqa: E402
from maskclip_d2.utils import atomic_write  # noqa: E402
from maskclip_d2.modeling.inference_dtype import add_dtype_argument, dtype_opts  # noqa: E402
from maskclip_d2.predictor import (  # noqa: E402
    TASKS, Predictor, parse_tasks as parse_task_list, parse_vocabulary, read_rgb_image, thing_flags,
)
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
    vocab.add_argument(
        "--vocab", help='classes: "toy rabbit, real rabbit; sky; grass", or a preset with its '
        f"thing / stuff flags: {', '.join(VOCABULARY_PRESETS)}",
    )
    vocab.add_argument("--vocab-file", help="a file with one class per line (commas: synonyms)")
    parser.add_argument(
        "--stuff", help='stuff classes of the vocabulary, e.g. "sky; grass" (a class or one of '
        "its synonyms); the other classes are things",
    )
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
    add_dtype_argument(parser)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def parse_tasks(text):
    """--task: each task once, in the order given."""
    try:
        return parse_task_list([t for t in text.split(",") if t.strip()])
    except ValueError:
        raise ValueError(f"unknown --task {text!r}: choose from {', '.join(TASKS)} (or 'all')") from None


def read_vocabulary(args):
    """(class names, thing flags) from --vocab / --vocab-file and --stuff; (None, None) when
    no vocabulary is given (the model's own is used)."""
    if args.vocab_file:
        with open(args.vocab_file) as f:
            names = parse_vocabulary(f.read())
    elif args.vocab is not None:
        names = parse_vocabulary(args.vocab)
    else:
        if args.stuff is not None:
            raise ValueError("--stuff names classes of --vocab / --vocab-file: give one of those")
        return None, None
    names, preset_flags = resolve_vocabulary(names)  # a preset name brings its thing flags
    stuff = None if args.stuff is None else [s.strip() for s in args.stuff.split(";") if s.strip()]
    try:
        return names, thing_flags(names, stuff=stuff, default=preset_flags)
    except ValueError as err:
        raise ValueError(f"--stuff: {err}") from None


def output_stems(inputs):
    """Per input, its results' path without extension, relative to the output folder: the
    input's path relative to the inputs' common folder, without its extension; inputs that
    would share one keep their extension in it ("photo.jpg" -> "photo_jpg"), and any clash
    left gets a number."""
    paths = [os.path.abspath(p) for p in inputs]
    common = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
    relative = [os.path.relpath(p, common) for p in paths]
    plain = [os.path.splitext(r)[0] for r in relative]
    shared = {s for s in plain if plain.count(s) > 1}
    stems, taken = [], set()
    for rel, stem in zip(relative, plain):
        if stem in shared:
            root, ext = os.path.splitext(rel)
            stem = f"{root}_{ext.lstrip('.')}"
        unique, n = stem, 2
        while unique.lower() in taken:
            unique, n = f"{stem}-{n}", n + 1
        taken.add(unique.lower())
        stems.append(unique)
    return stems


def plan_outputs(args, inputs, tasks):
    """{input: ([PNG per task], JSON)}; ValueError if a result would replace an input."""
    single_file = args.output.lower().endswith(".png")
    plan = {}
    if single_file:  # one input; several tasks get one file each
        base = os.path.splitext(args.output)[0]
        pngs = [args.output] if len(tasks) == 1 else [f"{base}_{task}.png" for task in tasks]
        plan[inputs[0]] = (pngs, base + ".json")
    else:
        for path, stem in zip(inputs, output_stems(inputs)):
            base = os.path.join(args.output, stem)
            pngs = [f"{base}.png" if len(tasks) == 1 else f"{base}_{task}.png" for task in tasks]
            plan[path] = (pngs, f"{base}.json")
    sources = {os.path.realpath(p): p for p in inputs}
    for path, (pngs, json_path) in plan.items():
        for out in pngs + [json_path]:
            if os.path.realpath(out) in sources:
                raise ValueError(
                    f"the result {out} of {path} would replace the input "
                    f"{sources[os.path.realpath(out)]}: choose another --output folder"
                )
    return plan


def check_writable(folders):
    """Create the output folders and check that a file can be written in each; ValueError
    naming the folder and the reason otherwise (before the model loads)."""
    for folder in sorted(set(folders)):
        folder = folder or "."
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".maskclip_demo_write_check"):
                pass
        except OSError as err:
            raise ValueError(f"cannot write results to {folder}: {err.strerror or err}") from None


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
    cfg = get_maskclip_cfg(args.config_file, list(args.opts) + dtype_opts(args))
    if args.proposals:
        cfg.MODEL.MASKCLIP.PROPOSAL_NETWORK = args.proposals
    cfg.freeze()
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    # Bad input is refused before the model loads.
    try:
        tasks = parse_tasks(args.task)
        vocabulary, is_thing = read_vocabulary(args)
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
        if args.config_file or args.proposals or args.dtype:
            print("error: --backend onnx reads the config stored in --onnx-model; drop "
                  "--config-file / --proposals / --dtype", file=sys.stderr)
            return 2
    elif not args.config_file:
        print("error: --config-file is required (or --backend onnx --onnx-model FILE)", file=sys.stderr)
        return 2
    elif not os.path.isfile(args.config_file):
        print(f"error: config file {args.config_file} not found", file=sys.stderr)
        return 2

    single_file_output = args.output.lower().endswith(".png")
    out_dir = os.path.dirname(args.output) if single_file_output else args.output
    try:
        if args.input:
            inputs = expand_inputs(args.input)
        else:
            check_writable([out_dir])
            inputs = sample_photos(os.path.join(out_dir, "inputs"))
        if single_file_output and len(inputs) != 1:
            raise ValueError(f"--output {args.output} is a file but there are {len(inputs)} inputs")
        if not inputs:
            raise ValueError("--input matched no image")
        plan = plan_outputs(args, inputs, tasks)
        check_writable(os.path.dirname(p) for pngs, json_path in plan.values() for p in pngs + [json_path])
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
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

    predictor = predictor or Predictor(cfg)
    if vocabulary is None:
        vocabulary, is_thing = predictor.vocabulary, predictor.is_thing
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
        _, drawn, segments = demo.run_on_image(rgb, vocabulary, tasks, is_thing)
        pngs, json_path = plan[path]
        for task, png in zip(tasks, pngs):
            with atomic_write(png) as tmp:
                Image.fromarray(drawn[task]).save(tmp, format="PNG")
        record = {"image": path, "vocabulary": vocabulary,
                  "stuff": [n for n, thing in zip(vocabulary, is_thing) if not thing],
                  **{task: segments[task] for task in tasks}}
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
