#!/usr/bin/env python
"""Open-vocabulary segmentation of your images with your own vocabulary.

    python demo/demo.py --config-file configs/coco/maskclip_vitl14_336.yaml \
        --input photos/ img.jpg 'more/*.png' --output out/ \
        --vocab "toy rabbit, real rabbit; sky; grass" --task panoptic \
        --opts MODEL.WEIGHTS model_final.pth
    python demo/demo.py --backend onnx --onnx-model model.onnx --input img.jpg --vocab "sky; grass"

Semicolons separate classes, commas separate synonyms of one class; ``--vocab ade20k_150``
takes a benchmark's vocabulary (``maskclip_d2.vocabularies``) with its thing / stuff
flags. ``--stuff "sky; grass"`` marks stuff classes (one region each in panoptic output; the
others are things). For every image the demo writes a PNG per task drawn by Detectron2's
Visualizer and a JSON of the segments, at the image's path relative to the inputs' common
folder (``a/photo.jpg`` -> ``OUT/a/photo_panoptic.png``, ``OUT/a/photo.json``); inputs that
would share a result name keep their extension in it (``photo_jpg_panoptic.png``). No result
ever replaces an input, and a run whose outputs would share a name (``x.jpg``'s mask file
``x.panoptic.json`` and ``x.panoptic.jpg``'s result) is refused before it starts. Without --input it runs on photographs that ship with scikit-image,
written to ``OUT/inputs/``.

A non-empty --output folder is refused unless --overwrite: results of two runs never mix
unnoticed. ``OUT/demo_run.json`` lists what a run writes; --overwrite removes those files of
the earlier run (and nothing else) once this run has its first result to write: a bad config,
a model that does not load or inputs that cannot be read leave them as they were. A ``.png``
--output has no run record: --overwrite replaces its results, and the mask files of
--save-masks that its JSON result lists (``mask_files``).
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

from detectron2.utils.logger import setup_logger

from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.vocabularies import VOCABULARY_PRESETS, resolve_vocabulary
from maskclip_d2.given_masks import read_masks
from maskclip_d2.mask_files import CATEGORIES_FILE, check_categories, mask_file_paths
from maskclip_d2.modeling.inference_dtype import add_dtype_argument, dtype_opts
from maskclip_d2.utils import atomic_write, write_json_atomic
from maskclip_d2.predictor import (
    TASKS, Predictor, parse_tasks as parse_task_list, parse_vocabulary, read_rgb_image, thing_flags,
)
from maskclip_d2.visualization import VisualizationDemo

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
RUN_RECORD = "demo_run.json"  # in --output: what the run wrote, for --overwrite


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (pytorch backend)")
    parser.add_argument(
        "--backend", choices=["pytorch", "onnx"], default="pytorch",
        help="onnx: run a model exported by tools/export_onnx.py with ONNX Runtime (its config "
        "is stored in the file; --opts may change post-processing keys)",
    )
    parser.add_argument("--onnx-model", metavar="FILE", help="the .onnx file of --backend onnx")
    parser.add_argument(
        "--input", nargs="+", help="image files, folders or glob patterns (default: scikit-image's "
        f"photographs {', '.join(SAMPLE_PHOTOS)}, written to OUTPUT/inputs/)",
    )
    parser.add_argument(
        "--output", default="output/demo_results", help="output folder, refused if not empty "
        "unless --overwrite (default: %(default)s); or a .png file name, for one input",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help=f"write into a non-empty --output: the files an earlier run listed in {RUN_RECORD} "
        "are removed once this run has a result to write, other files are kept",
    )
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
        "--side-by-side", action="store_true", help="draw each input left of its result",
    )
    parser.add_argument(
        "--proposals", choices=["mask2former", "maskrcnn", "sam"],
        help="proposal network (MODEL.MASKCLIP.PROPOSAL_NETWORK); the config's model keys must "
        "describe it (maskrcnn: configs/coco/maskclip_maskrcnn_vitl14_336.yaml; sam: configs/sam/). 'gt' needs "
        "annotations, so it is for evaluation with train_net.py, not for the demo",
    )
    parser.add_argument(
        "--masks", metavar="FILE_OR_FOLDER",
        help="name masks of your own instead of segmenting (--task is then ignored): a label PNG "
        "(each non-zero value a mask) or a JSON list of COCO RLEs for one input, or a folder "
        "holding <input name>.png / .json for each input",
    )
    parser.add_argument(
        "--max-image-size", type=int, default=4096,
        help="larger images are scaled down to this longest side before anything else",
    )
    parser.add_argument(
        "--save-masks", action="store_true",
        help="also write the segmentations beside the pictures: <name>.panoptic.png + .json "
        "(COCO panoptic), <name>.semantic.png (class per pixel), <name>.instances.json (COCO "
        "results, RLE) and categories.json (maskclip_d2.mask_files); before --confidence-threshold",
    )
    add_dtype_argument(parser)
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def plural(count, noun):
    return f"{count} {noun}{'' if count == 1 else 's'}"


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
    """{input: ([PNG per task], JSON)}; ValueError if a result would replace an input. In a
    folder, PNGs are ``<stem>_<task>.png`` whatever the number of tasks; a ``.png`` --output
    is the file the user named (one task) or ``<name>_<task>.png`` (several)."""
    single_file = args.output.lower().endswith(".png")
    plan = {}
    if single_file:  # one input; several tasks get one file each
        base = os.path.splitext(args.output)[0]
        pngs = [args.output] if len(tasks) == 1 else [f"{base}_{task}.png" for task in tasks]
        plan[inputs[0]] = (pngs, base + ".json")
    else:
        for path, stem in zip(inputs, output_stems(inputs)):
            base = os.path.join(args.output, stem)
            plan[path] = ([f"{base}_{task}.png" for task in tasks], f"{base}.json")
    sources = {os.path.realpath(p): p for p in inputs}
    for path, (pngs, json_path) in plan.items():
        for out in pngs + [json_path]:
            if os.path.realpath(out) in sources:
                raise ValueError(
                    f"the result {out} of {path} would replace the input "
                    f"{sources[os.path.realpath(out)]}: choose another --output folder"
                )
    return plan


def run_outputs(args, plan, tasks, out_dir, single_file):
    """Every file the run writes, as (path, what it is): the results, the mask files and each
    folder's categories.json of --save-masks, the run record."""
    outputs = [(p, f"the result {p} of {path}") for path, (pngs, json_path) in plan.items()
               for p in pngs + [json_path]]
    if args.save_masks:
        outputs += [(p, f"the mask file {p} of {path}") for path, (_, json_path) in plan.items()
                    for p in planned_mask_files(json_path, tasks)]
        # each folder's categories.json too: --overwrite with another vocabulary replaces it
        outputs += [(p, f"the vocabulary file {p} of --save-masks") for p in sorted(
            {os.path.join(os.path.dirname(j), CATEGORIES_FILE) for _, j in plan.values()})]
    if not single_file:
        record = os.path.join(out_dir, RUN_RECORD)
        outputs.append((record, f"the run record {record}"))
    return outputs


def check_one_file_each(outputs):
    """ValueError naming both when two outputs of the run (``run_outputs``) are one file;
    names that differ only in case count as one (some file systems ignore case)."""
    seen = {}
    for path, what in outputs:
        key = os.path.realpath(path).lower()
        if key in seen:
            raise ValueError(f"{seen[key]} and {what} would be one file: rename the input so that "
                             "their names differ, or choose another --output")
        seen[key] = what


def earlier_run_files(args, single_file, plan, keep=()):
    """ValueError unless --output is free: a folder that does not exist or is empty, a .png
    whose results (``plan``) do not exist yet; or --overwrite. Removes nothing: returns the
    files of the earlier run that this run replaces, removed only once it has a result to
    write (``replace_earlier_run``): in a folder, those its ``RUN_RECORD`` lists, except
    ``keep`` (this run's inputs and masks files, which an earlier run may have written: its
    sample photos); for a .png, the mask files its JSON result lists (``mask_files``)."""
    out = args.output
    if single_file:
        taken = [p for pngs, json_path in plan.values() for p in pngs + [json_path] if os.path.exists(p)]
        if taken and not args.overwrite:
            raise ValueError(f"{taken[0]} exists: choose another --output, or add --overwrite to replace it")
        return earlier_mask_files(next(iter(plan.values()))[1]) if args.overwrite else []
    if not os.path.isdir(out) or not os.listdir(out):
        return []
    if not args.overwrite:
        raise ValueError(
            f"--output {out} is not empty (results of an earlier run?): choose a new folder, or "
            f"add --overwrite to replace the demo's earlier results there ({RUN_RECORD} lists them)"
        )
    record = os.path.join(out, RUN_RECORD)
    if not os.path.isfile(record):
        return []
    with open(record) as f:
        written = json.load(f).get("written", [])
    root = os.path.realpath(out)
    stale = []
    for rel in written:
        path = os.path.realpath(os.path.join(out, rel))
        if path.startswith(root + os.sep) and os.path.isfile(path) and path not in keep:
            stale.append(path)
    return stale


def earlier_mask_files(json_path):
    """The mask files that the demo's earlier result ``json_path`` lists as its own
    (``mask_files``) and that exist; only the names --save-masks gives its stem."""
    try:
        with open(json_path) as f:
            listed = json.load(f).get("mask_files", [])
    except (OSError, ValueError, AttributeError):  # no result there, or not the demo's
        return []
    folder, stem = os.path.split(os.path.splitext(json_path)[0])
    own = {os.path.realpath(p) for p in mask_file_paths(folder, stem)}
    listed = {os.path.realpath(os.path.join(folder, name)) for name in listed if isinstance(name, str)}
    return sorted(p for p in own & listed if os.path.isfile(p))


def replace_earlier_run(stale):
    """Removes the earlier run's files that this run replaces (``earlier_run_files``)."""
    for path in stale:
        if os.path.isfile(path):
            os.remove(path)


def check_no_mask_files(plan, tasks, replaced=()):
    """--save-masks never replaces a file, except the earlier run's that --overwrite replaces
    (``replaced``): ValueError naming the first that exists."""
    for path in (p for _, json_path in plan.values() for p in planned_mask_files(json_path, tasks)):
        if os.path.lexists(path) and os.path.realpath(path) not in replaced:
            raise ValueError(f"--save-masks: {path} exists; mask files never replace a file: "
                             "choose another --output folder or remove it")


def planned_mask_files(json_path, tasks):
    """The mask files --save-masks writes beside the JSON result ``json_path``."""
    base = os.path.splitext(json_path)[0]
    return mask_file_paths(os.path.dirname(base), os.path.basename(base), [TASKS[task] for task in tasks])


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
            with atomic_write(path) as tmp:  # an interrupted run leaves no half photo behind
                Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(tmp, format="PNG")
        paths.append(path)
    return paths


def masks_files(masks, inputs):
    """--masks: {input: its masks file}: the file itself for one input, else the folder's
    <input name>.png or .json; ValueError naming what is missing."""
    if not os.path.isdir(masks):
        if not os.path.isfile(masks):
            raise ValueError(f"--masks {masks}: no such file or folder")
        if len(inputs) != 1:
            raise ValueError(f"--masks {masks} is one file for {len(inputs)} inputs: give a folder")
        return {inputs[0]: masks}
    files = {}
    for path in inputs:
        stem = os.path.splitext(os.path.basename(path))[0]
        found = [os.path.join(masks, stem + ext) for ext in (".png", ".json")
                 if os.path.isfile(os.path.join(masks, stem + ext))]
        if not found:
            raise ValueError(f"--masks: no {stem}.png or {stem}.json in {masks} for the input {path}")
        files[path] = found[0]
    return files


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
        if args.masks:
            print("error: --masks runs the PyTorch model (an exported graph computes its own "
                  "proposals); use --config-file", file=sys.stderr)
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
        inputs = expand_inputs(args.input) if args.input else [
            os.path.join(out_dir, "inputs", f"{name}.png") for name in SAMPLE_PHOTOS]
        if single_file_output and len(inputs) != 1:
            raise ValueError(
                f"--output {args.output} names one PNG file (it ends in .png), but there are "
                f"{len(inputs)} inputs: give an output folder instead"
            )
        if not inputs:
            raise ValueError("--input matched no image")
        if args.masks:
            if args.save_masks:
                raise ValueError("--save-masks writes the files of segmentation tasks; --masks names "
                                 "masks of your own: use one or the other")
            tasks, masks = ["masks"], masks_files(args.masks, inputs)
        plan = plan_outputs(args, inputs, tasks)
        outputs = run_outputs(args, plan, tasks, out_dir, single_file_output)
        check_one_file_each(outputs)
        results = {os.path.realpath(p) for pngs, json_path in plan.values() for p in pngs + [json_path]}
        for given in (masks.values() if args.masks else []):
            if os.path.realpath(given) in results:
                raise ValueError(f"a result would replace the masks file {given}: choose another --output folder")
        # this run's inputs (its sample photos too) and masks files are never the earlier run's to remove
        keep = {os.path.realpath(p) for p in inputs}
        keep |= {os.path.realpath(p) for p in (masks.values() if args.masks else [])}
        stale = earlier_run_files(args, single_file_output, plan, keep)
        if not args.input:
            check_writable([out_dir])
        check_writable(os.path.dirname(p) for pngs, json_path in plan.values() for p in pngs + [json_path])
        if args.save_masks:
            check_no_mask_files(plan, tasks, replaced=set(stale))
        # A bad config or model fails here, before anything of an earlier run is removed.
        setup_logger(name="maskclip_d2")
        if args.backend == "onnx":
            from maskclip_d2.deploy import ONNXPredictor

            predictor = ONNXPredictor(args.onnx_model, opts=args.opts)
            cfg = predictor.cfg
        else:
            try:
                cfg = setup_cfg(args)
            except (KeyError, AssertionError) as err:  # yacs' unknown keys (file / --opts)
                raise ValueError(f"{args.config_file} / --opts: {err.args[0] if err.args else err}") from None
            predictor = None
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    if cfg.MODEL.CLIP.WEIGHTS == "random":
        print(
            "NOTE: this config uses RANDOM CLIP weights (MODEL.CLIP.WEIGHTS random): the demo "
            "checks that the pipeline runs; its labels and scores mean nothing."
        )
    try:
        predictor = predictor or Predictor(cfg)
    except FileNotFoundError as err:
        hint = (" (the synthetic world's model: run `make demo` once to train it)"
                if ".cache/synthetic_world_ci" in str(err) else "")
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    if vocabulary is None:
        vocabulary, is_thing = predictor.vocabulary, predictor.is_thing
    try:  # a categories.json that --save-masks would not replace must list this vocabulary
        for path in (p for p, _ in outputs if os.path.basename(p) == CATEGORIES_FILE):
            if os.path.realpath(path) not in stale:
                check_categories(path, vocabulary, is_thing)
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    demo = VisualizationDemo(predictor, args.confidence_threshold, side_by_side=args.side_by_side)

    run_record = os.path.join(out_dir, RUN_RECORD)
    planned = ([] if args.input else list(inputs)) + [p for p, _ in outputs if p != run_record]
    started = False

    def start_writing():
        """Once, before this run's first file: the earlier run's files go, and the new run
        record lists what this run writes (an interrupted run is replaced whole too)."""
        nonlocal started
        if started:
            return
        started = True
        replace_earlier_run(stale)
        if not single_file_output:
            write_json_atomic({"argv": sys.argv[1:] if argv is None else list(argv),
                               "written": [os.path.relpath(p, out_dir) for p in planned]},
                              run_record)

    if not args.input:
        start_writing()
        sample_photos(os.path.join(out_dir, "inputs"))
    failures = 0
    # The bar on a terminal only: piped, it would interleave with the result lines.
    for path in tqdm(inputs, desc="images", unit="img", disable=len(inputs) < 2 or not sys.stderr.isatty()):
        start = time.perf_counter()
        try:
            rgb = read_rgb_image(path)
        except ValueError as err:
            tqdm.write(f"skipped {err}")
            failures += 1
            continue
        note, original_size = "", rgb.shape[:2]
        if max(rgb.shape[:2]) > args.max_image_size:
            scale = args.max_image_size / max(rgb.shape[:2])
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
            note = f" (scaled down to {size[0]}x{size[1]})"
        if args.masks:
            given, ids = masks[path], None
            try:
                if note:  # scaled down: the masks with the image (nearest), keeping their ids
                    given, ids = read_masks(given, original_size, float("inf"))
                    given = np.stack([np.asarray(Image.fromarray(m).resize(size, Image.NEAREST)) for m in given])
                _, drawn, segments = demo.classify_masks(rgb, given, vocabulary, is_thing)
            except ValueError as err:
                tqdm.write(f"skipped {path}: {err}")
                failures += 1
                continue
            for segment, mask_id in zip(segments, ids or []):
                segment["mask_id"] = mask_id
            drawn, segments = {"masks": drawn}, {"masks": segments}
        else:
            outputs, drawn, segments = demo.run_on_image(rgb, vocabulary, tasks, is_thing)
        pngs, json_path = plan[path]
        start_writing()
        if args.save_masks:
            base = os.path.splitext(json_path)[0]
            mask_files = predictor.save_masks(outputs, os.path.dirname(base), os.path.basename(base),
                                              image_id=os.path.basename(base))
        for task, png in zip(tasks, pngs):
            with atomic_write(png) as tmp:
                Image.fromarray(drawn[task]).save(tmp, format="PNG")
        record = {"image": path, "vocabulary": vocabulary,
                  "stuff": [n for n, thing in zip(vocabulary, is_thing) if not thing],
                  **{task: segments[task] for task in tasks}}
        if args.save_masks:  # the result's own mask files: what --overwrite may replace
            record["mask_files"] = [os.path.basename(p) for p in mask_files]
        with atomic_write(json_path) as tmp, open(tmp, "w") as f:
            json.dump(record, f, indent=1)
        counts = ", ".join(
            f"{task}: {plural(len(segments[task]), 'segment')} "
            f"({', '.join(sorted({s['class'].split(',')[0] for s in segments[task]})) or '-'})"
            for task in tasks
        )
        tqdm.write(f"{path}{note}: {counts} in {time.perf_counter() - start:.2f}s")
    print(f"wrote {len(inputs) - failures} result(s) to {out_dir or '.'}" + (f"; {failures} input(s) skipped" if failures else ""))
    return 1 if failures == len(inputs) else 0


if __name__ == "__main__":
    sys.exit(main())
