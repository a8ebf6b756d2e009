#!/usr/bin/env python
"""A web page for open-vocabulary segmentation: upload an image, type a vocabulary, see the
semantic, panoptic and instance segmentations, download the masks.

    python demo/app.py                          # the synthetic world's model (as make demo)
    python demo/app.py --config-file configs/coco/maskclip_vitl14_336.yaml \
        --opts MODEL.WEIGHTS model_final.pth
    python demo/app.py --onnx-model model.onnx  # ONNX Runtime (tools/export_onnx.py)
    python demo/app.py --host 0.0.0.0 --port 8080   # reachable from other machines

It serves on 127.0.0.1:7860 by default, and contacts nothing else: no analytics, no share
link, system fonts. Without --config-file / --onnx-model it serves the model ``make demo``
trains (tools/synthetic_world.py --scale ci, trained on first use and cached). The sliders
re-run only the post-processing of the cached model outputs; every request writes its pictures
and its zip of mask files in a temporary folder of its own, served from there while the page
shows them: the last --keep-requests requests' folders are kept (all removed at exit).
"""
import argparse
import atexit
import html
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import deque

# Before gradio is imported: no telemetry / version check, files in our own temporary folder.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_TEMP_ROOT = tempfile.mkdtemp(prefix="maskclip_app_")
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_TEMP_ROOT, "gradio")
atexit.register(shutil.rmtree, _TEMP_ROOT, ignore_errors=True)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from maskclip_d2.mask_files import save_masks  # noqa: E402
from maskclip_d2.modeling.clip.text_encoder import check_vocabulary  # noqa: E402
from maskclip_d2.predictor import TASKS, parse_vocabulary, read_rgb_image, thing_flags  # noqa: E402
from maskclip_d2.visualization import demo_metadata, draw_outputs  # noqa: E402
from maskclip_d2.vocabularies import resolve_vocabulary  # noqa: E402

PRESETS = ("coco_panoptic", "ade20k_150", "ade20k_847", "pascal_context_59", "pascal_context_459", "lvis")
SYNTHETIC = os.path.join(ROOT, ".cache", "synthetic_world_ci")
SYNTHETIC_VOCAB = ("purple blob; orange blob; water; brick; red blob; green blob; blue blob; "
                   "yellow blob; pink blob; cyan blob; grass; sand; snow; gravel")
SYNTHETIC_STUFF = "water; brick; grass; sand; snow; gravel"
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
KEEP_REQUESTS = 200  # request folders kept, each with its pictures and its zip of mask files


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (default: the synthetic world's)")
    parser.add_argument("--onnx-model", metavar="FILE", help="serve a model exported by tools/export_onnx.py")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--vocab", help="the vocabulary shown at start (default: the model's)")
    parser.add_argument("--stuff", default="", help="the stuff classes shown at start")
    parser.add_argument("--examples", nargs="*", help="example images (default: the synthetic "
                        "world's validation scenes, or scikit-image's photographs)")
    parser.add_argument("--max-image-size", type=int, default=2048,
                        help="larger images are scaled down to this longest side, with a notice")
    parser.add_argument("--keep-requests", type=positive_int, default=KEEP_REQUESTS, metavar="N",
                        help="the files (pictures, mask zip) of the last N requests stay downloadable "
                        "for as long as the server runs; older ones are removed (default: %(default)s)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


# ---- vocabulary ------------------------------------------------------------------------------
def combine_vocabulary(text: str, presets, stuff_text: str):
    """(class names, thing flags) of the checked presets (their classes and flags, in order)
    then the typed classes (``;`` classes, ``,`` synonyms; things unless named in
    ``stuff_text``). A class already listed is not repeated. ValueError with a readable
    message for an unknown preset, an empty vocabulary or an unknown stuff class."""
    names, flags, seen = [], [], set()

    def add(name, flag):
        if name.strip().lower() not in seen:
            seen.add(name.strip().lower())
            names.append(name)
            flags.append(flag)

    for preset in presets or []:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
        preset_names, preset_flags = resolve_vocabulary(preset)
        for name, flag in zip(preset_names, preset_flags):
            add(name, flag)
    typed = (text or "").strip()
    if typed:
        for name in parse_vocabulary(typed):
            add(name, True)
    if not names:
        raise ValueError("the vocabulary is empty: type classes (e.g. \"cat; sky, heaven; grass\") "
                         "or check a preset")
    names = list(check_vocabulary(names))
    stuff = [s.strip() for s in (stuff_text or "").split(";") if s.strip()]
    return names, thing_flags(names, stuff=stuff or None, default=flags)


def legend_html(vocabulary, outputs_segments) -> str:
    """Colour swatches of the classes that appear in any output."""
    metadata = demo_metadata(vocabulary)
    present = sorted({s["category_id"] for segments in outputs_segments.values() for s in segments})
    items = "".join(
        f'<span class="legend-item"><span class="swatch" style="background: rgb{tuple(metadata.stuff_colors[k])}">'
        f'</span>{html.escape(metadata.stuff_classes[k])}</span>'
        for k in present
    )
    return f'<div class="legend">{items or "no segment"}</div>'


def segments_table(segments):
    """Rows (task, class, score, area) of every task's segments; semantic ones have no score."""
    return [[task, s["class"], s.get("score"), int(s["area"])]
            for task in TASKS for s in segments.get(task, [])]


class SegmentationApp:
    """The page's logic, independent of the widgets: one predictor, serialised by a lock
    (Gradio's queue runs one request at a time per event; the lock covers them all)."""

    def __init__(self, predictor, max_image_size=2048, temp_root=_TEMP_ROOT, min_score=0.5,
                 keep_requests=KEEP_REQUESTS):
        if keep_requests < 1:
            raise ValueError(f"keep_requests must be 1 or more, got {keep_requests}")
        self.predictor = predictor
        self.max_image_size = max_image_size
        self.requests_root = os.path.join(temp_root, "requests")
        os.makedirs(self.requests_root, exist_ok=True)
        self.keep_requests = keep_requests
        self.requests = deque()  # request folders, oldest first
        self.requests_lock = threading.Lock()
        self.lock = threading.Lock()
        self.model_runs = 0
        self.defaults = {
            "object_mask_threshold": float(predictor.model.object_mask_threshold),
            "overlap_threshold": float(predictor.model.overlap_threshold),
            "detections_per_image": int(predictor.model.detections_per_image),
            "min_score": min_score,
        }

    def read_image(self, path):
        """(RGB array, notice): the upload read, scaled down when too large."""
        if not path:
            raise ValueError("no image: upload one or pick an example")
        try:
            rgb = read_rgb_image(path)
        except ValueError as err:  # named by the upload's name, not the server's path
            raise ValueError(str(err).replace(path, os.path.basename(path))) from None
        notice = ""
        if max(rgb.shape[:2]) > self.max_image_size:
            scale = self.max_image_size / max(rgb.shape[:2])
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            notice = (f"The image ({rgb.shape[1]}x{rgb.shape[0]}) was scaled down to "
                      f"{size[0]}x{size[1]} (--max-image-size {self.max_image_size}). ")
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
        return rgb, notice

    def segment(self, path, text, presets, stuff_text):
        """Runs the model: the cached state for ``render``, and a notice."""
        vocabulary, is_thing = combine_vocabulary(text, presets, stuff_text)
        rgb, notice = self.read_image(path)
        start = time.perf_counter()
        with self.lock:
            cached = self.predictor.model_outputs(rgb, vocabulary=vocabulary, is_thing=is_thing)
            self.model_runs += 1
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        return {"cached": cached, "rgb": rgb, "stem": stem, "model_s": time.perf_counter() - start}, notice

    def render(self, state, object_mask_threshold, overlap_threshold, detections_per_image, min_score):
        """Post-processes the cached outputs with the sliders' values: the three pictures
        (arrays), the segments, the zip of the mask files, the seconds, the values used and
        the pictures' PNG files; the files in a new request folder (``write_request``)."""
        start = time.perf_counter()
        cached = state["cached"]
        with self.lock:
            outputs = self.predictor.postprocess(
                cached, task="all", object_mask_threshold=float(object_mask_threshold),
                overlap_threshold=float(overlap_threshold),
                detections_per_image=int(detections_per_image),
            )
        vocabulary = cached["vocabulary"]
        drawn, segments = draw_outputs(state["rgb"], outputs, vocabulary, list(TASKS), float(min_score))
        zip_path, pictures = self.write_request(outputs, cached, state["stem"], drawn)
        used = (f"object-mask threshold {float(object_mask_threshold):.2f}, overlap threshold "
                f"{float(overlap_threshold):.2f}, top-k {int(detections_per_image)}, minimum score "
                f"{float(min_score):.2f}")
        return drawn, segments, zip_path, time.perf_counter() - start, used, pictures

    def new_request_folder(self):
        """A folder of its own for a request's files. The page links them (served from there,
        see ``build_page``) for as long as it is shown, so they are kept: only the oldest
        request folders beyond the last ``keep_requests`` are removed."""
        folder = tempfile.mkdtemp(dir=self.requests_root)
        with self.requests_lock:
            self.requests.append(folder)
            while len(self.requests) > self.keep_requests:
                shutil.rmtree(self.requests.popleft(), ignore_errors=True)
        return folder

    def write_request(self, outputs, cached, stem, drawn):
        """(zip, {task: PNG}): the mask files (``maskclip_d2.mask_files``) in
        ``<stem>_masks.zip`` and the pictures as ``<stem>_<task>.png``, in a new request folder."""
        folder = self.new_request_folder()
        pictures = {}
        for task, picture in drawn.items():
            pictures[task] = os.path.join(folder, f"{stem}_{task}.png")
            Image.fromarray(picture).save(pictures[task], format="PNG")
        files = save_masks(outputs, os.path.join(folder, "masks"), stem, cached["vocabulary"],
                           cached["is_thing"])
        zip_path = os.path.join(folder, f"{stem}_masks.zip")
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files + [os.path.join(folder, "masks", "categories.json")]:
                archive.write(path, os.path.basename(path))
        shutil.rmtree(os.path.join(folder, "masks"))
        return zip_path, pictures

    def status(self, kind, seconds, used, notice=""):
        return f"{notice}{kind} in {seconds:.3f} s ({used}) · model runs so far: {self.model_runs}"


class UnreadableUpload(str):
    """An upload that is not a readable image: the message saying so."""


def readable_uploads(preprocess):
    """gr.Image's ``preprocess``, whose unreadable uploads reach the handler as an
    ``UnreadableUpload`` (shown in the page, the last result kept) instead of failing the
    request. (An instance attribute: a gr.Image subclass would make Gradio write a .pyi file
    beside this script.)"""

    def wrapped(payload):
        try:
            return preprocess(payload)
        except Exception:  # PIL's many kinds; its message names a server path: not shown
            name = getattr(payload, "orig_name", None) or "the upload"
            return UnreadableUpload(f"{name} is not an image this app can read: upload a "
                                    "PNG, JPEG, BMP, GIF, TIFF or WebP file")

    return wrapped


# ---- the page --------------------------------------------------------------------------------
CSS = """
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; }
.legend-item { display: inline-flex; align-items: center; gap: 6px; }
.swatch { width: 14px; height: 14px; border-radius: 3px; display: inline-block; border: 1px solid #0003; }
"""


def build_page(app: SegmentationApp, examples, vocab="", stuff=""):
    import gradio as gr

    defaults = app.defaults
    # The request folders' files are served from where they are (not copied into Gradio's
    # cache): they stay as long as app keeps them (the last --keep-requests requests), not
    # as long as Gradio keeps its cache (delete_cache: uploads and the like).
    gr.set_static_paths([app.requests_root])
    with gr.Blocks(title="MaskCLIP open-vocabulary segmentation", analytics_enabled=False,
                   delete_cache=(300, 600)) as page:
        gr.Markdown("## MaskCLIP: open-vocabulary segmentation\nSemicolons separate classes, "
                    "commas synonyms of one class (`toy rabbit, real rabbit; sky; grass`).")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                 elem_id="image-input")
                image.preprocess = readable_uploads(image.preprocess)
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[image], label="Examples")
            with gr.Column(scale=1):
                vocabulary = gr.Textbox(label="Vocabulary", value=vocab, lines=3, elem_id="vocabulary",
                                        placeholder="cat; sky, heaven; grass")
                presets = gr.CheckboxGroup(list(PRESETS), label="Preset vocabularies (added to the typed classes)",
                                           elem_id="presets")
                stuff_box = gr.Textbox(label="Stuff classes (one region each in panoptic output)",
                                       value=stuff, elem_id="stuff", placeholder="sky; grass")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                with gr.Accordion("Post-processing (no model run)", open=True):
                    object_mask = gr.Slider(0, 1, value=defaults["object_mask_threshold"], step=0.01,
                                            label="Object-mask threshold", elem_id="object-mask-threshold")
                    overlap = gr.Slider(0, 1, value=defaults["overlap_threshold"], step=0.01,
                                        label="Overlap threshold", elem_id="overlap-threshold")
                    topk = gr.Slider(1, max(defaults["detections_per_image"], 100),
                                     value=defaults["detections_per_image"], step=1,
                                     label="Instances: top-k", elem_id="topk")
                    min_score = gr.Slider(0, 1, value=defaults["min_score"], step=0.01,
                                          label="Minimum score drawn (panoptic, instances)",
                                          elem_id="min-score")
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            pictures = [gr.Image(label=task.capitalize(), format="png", interactive=False,
                                 elem_id=f"output-{task}") for task in TASKS]
        legend = gr.HTML(elem_id="legend")
        table = gr.Dataframe(headers=["task", "class", "score", "area"], label="Segments",
                             interactive=False, elem_id="segments")
        download = gr.File(label="Masks (zip: COCO panoptic PNG + JSON, label PNG, COCO RLE JSON)",
                           elem_id="download")

        outputs = [state, *pictures, legend, table, download, status]

        def show(state_value, kind, seconds, sliders, notice=""):
            _, segments, zip_path, post_s, used, files = app.render(state_value, *sliders)
            message = app.status(kind, seconds + post_s, used, notice)
            return (state_value, *[files[t] for t in TASKS], legend_html(
                state_value["cached"]["vocabulary"], segments), segments_table(segments), zip_path, message)

        def refuse(message):
            """The error in a toast and in the status line; the last result stays."""
            gr.Warning(message)
            return (*[gr.skip()] * (len(outputs) - 1), f"**Error:** {message}")

        def on_run(path, text, checked, stuff_text, *sliders):
            if isinstance(path, UnreadableUpload):
                return refuse(str(path))
            try:
                state_value, notice = app.segment(path, text, checked, stuff_text)
            except ValueError as err:
                return refuse(str(err))
            return show(state_value, "Segmented (model + post-processing)", state_value["model_s"], sliders, notice)

        def on_slider(state_value, *sliders):
            if state_value is None:
                return (None, *[gr.skip()] * (len(outputs) - 1))
            return show(state_value, "Post-processed the cached outputs (no model run)", 0.0, sliders)

        sliders = [object_mask, overlap, topk, min_score]
        # one queue for every event: a single model serves them all, one request at a time
        run.click(on_run, [image, vocabulary, presets, stuff_box, *sliders], outputs,
                  concurrency_id="maskclip")
        for slider in sliders:
            slider.release(on_slider, [state, *sliders], outputs, concurrency_id="maskclip")
    page.queue(default_concurrency_limit=1, max_size=32)
    return page


# ---- the model -------------------------------------------------------------------------------
def synthetic_model(opts):
    """(config path, opts, vocabulary, stuff, examples) of make demo's model, trained first if
    its cache is missing or partial."""
    if not os.path.isfile(os.path.join(SYNTHETIC, "results.json")):
        print(f"Training the synthetic world's model into {SYNTHETIC} (a few CPU-minutes, once)")
        shutil.rmtree(SYNTHETIC, ignore_errors=True)
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "synthetic_world.py"), "--scale", "ci",
                        "--output", SYNTHETIC], check=True)
    opts = ["MODEL.WEIGHTS", os.path.join(SYNTHETIC, "stage2", "model_final.pth"),
            "MODEL.CLIP.WEIGHTS", os.path.join(SYNTHETIC, "clip", "synthetic_clip.pth"),
            "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", os.path.join(SYNTHETIC, "stage1", "model_final.pth"),
            "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts]
    inputs = os.path.join(SYNTHETIC, "demo_inputs")
    examples = sorted(os.path.join(inputs, f) for f in os.listdir(inputs)) if os.path.isdir(inputs) else []
    return (os.path.join(ROOT, "configs", "synthetic", "maskclip_rma.yaml"), opts, SYNTHETIC_VOCAB,
            SYNTHETIC_STUFF, examples)


def sample_photos():
    import skimage.data

    folder = os.path.join(_TEMP_ROOT, "examples")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in SAMPLE_PHOTOS:
        path = os.path.join(folder, f"{name}.png")
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(path)
        paths.append(path)
    return paths


def build_predictor(args):
    """(predictor, vocabulary text, stuff text, examples) for the command line."""
    from maskclip_d2.config import get_maskclip_cfg
    from maskclip_d2.predictor import Predictor

    vocab, stuff, examples = args.vocab, args.stuff, args.examples
    if args.onnx_model:
        from maskclip_d2.deploy import ONNXPredictor

        predictor = ONNXPredictor(args.onnx_model, opts=args.opts)
    else:
        config, opts = args.config_file, args.opts
        if config is None:
            config, opts, default_vocab, default_stuff, default_examples = synthetic_model(opts)
            vocab = default_vocab if vocab is None else vocab
            stuff = stuff or default_stuff
            examples = default_examples if examples is None else examples
        predictor = Predictor(get_maskclip_cfg(config, opts))
    if vocab is None:
        vocab = "; ".join(predictor.vocabulary)
        stuff = stuff or "; ".join(n for n, t in zip(predictor.vocabulary, predictor.is_thing) if not t)
    if examples is None:
        examples = sample_photos()
    return predictor, vocab, stuff, examples


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.onnx_model and args.config_file:
        print("error: --onnx-model reads the config stored in the file; drop --config-file", file=sys.stderr)
        return 2
    for path in (args.config_file, args.onnx_model):
        if path and not os.path.isfile(path):
            print(f"error: {path} not found", file=sys.stderr)
            return 2
    import gradio as gr
    from detectron2.utils.logger import setup_logger

    # SIGTERM exits like Ctrl-C, so the temporary folder is removed (atexit) either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    setup_logger(name="maskclip_d2")
    predictor, vocab, stuff, examples = build_predictor(args)
    app = SegmentationApp(predictor, args.max_image_size, keep_requests=args.keep_requests)
    page = build_page(app, examples, vocab, stuff)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    print(f"Serving on http://{args.host}:{args.port}", flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=False, show_error=True,
                theme=theme, css=CSS, footer_links=[], ssr_mode=False, mcp_server=False,
                allowed_paths=list(examples), favicon_path=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
