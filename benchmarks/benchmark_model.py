#!/usr/bin/env python
"""Time and memory-profile the whole MaskCLIP model: inference per stage, and one stage-2
training iteration against the dense Eq. 3-5 reference.

Random weights throughout (``MODEL.CLIP.WEIGHTS random``, no proposal weights): timings and
memory do not depend on the values. Every measurement runs in a fresh Python process of its
own (this script, re-invoked with ``--worker``), so that peak resident memory is that
measurement's alone.

Inference (one image of ``--image-size``, the config's proposals, ``--classes`` class names):
  variant "ours"        the config as given: CLIP's text tower on the CPU, freed after the
                        vocabulary is embedded (what ``train_net.py --eval-only`` does);
  variant "text_tower_resident"  the text tower kept in the model for new vocabularies, on its
                        device (MODEL.CLIP.TEXT_TOWER_DEVICE "", RELEASE_TEXT_TOWER False), as a
                        Predictor keeps it: offloaded to its file between embeddings
                        (MODEL.CLIP.OFFLOAD_TEXT_TOWER, the default);
  variant "text_tower_in_memory"  the same with the tower in memory (OFFLOAD_TEXT_TOWER False).
  Each variant times ``--dtypes`` round-robin in its process (see ``dtype_table``), and a last
  process runs one forward per dtype with oneDNN's verbose log: which kernels run (AMX or not).
  Per forward, the stages: proposals, clip_input (resize + normalise), encoder, text_logits,
  post_processing (everything after the text logits: mask resizing, softmax and the tasks),
  and within it each task (semantic_inference, panoptic_inference, instance_inference);
  ``post_processing_share`` = post_processing / total of the same forward. The fastest of
  ``--repeats`` forwards is reported (after one warm-up), with every forward's figures.
  ``tasks_s`` / ``reference_tasks_s``: the three tasks (``MaskCLIP.inference_one``) on the last
  forward's class and mask probabilities, against the straightforward implementation they
  replaced (maskclip_d2/modeling/postprocessing_reference.py), fastest of ``--repeats`` each.
  Memory: ``peak_rss_gb`` the process's peak resident set (the larger of
  ``warmup_peak_rss_gb``, the peak of the build, the vocabulary's embedding and the warm-up
  forwards, and the timed forwards'; ``ru_maxrss`` where the kernel's peak cannot be reset);
  ``build_peak_rss_gb`` the build's and the embedding's alone; ``inference_peak_rss_gb`` the peak during the timed forwards only (the kernel's
  VmHWM, reset before each); the bounds' outputs are recorded by one more forward per dtype
  afterwards, so they count in no timed forward's peak; on CUDA ``cuda_weights_gb`` (allocated after the build) and
  ``cuda_inference_peak_gb`` (``max_memory_allocated`` during the forwards).
  ``checkpoint`` (a process of its own, so that saving counts in no inference peak):
  ``checkpoint_mb`` the file ``StrictCheckpointer`` saves for this model with the config
  naming its CLIP and proposal weights (what training writes, with the optimizer state),
  beside ``full_checkpoint_mb``, every weight (Detectron2's ``DetectionCheckpointer``).

ONNX Runtime (``--onnx NAME.onnx [NAME.int8.onnx]``: graphs ``tools/export_onnx.py`` wrote for the
same config, ``--int8`` for the second): each graph in a process of its own through
``ONNXRuntimeMaskCLIP`` on the same photograph and vocabulary, timed as the PyTorch forwards
(the graph and the post-processing), with the file size; one table then puts PyTorch float32 /
bfloat16 and ONNX Runtime float32 / int8 side by side. (Their agreement with PyTorch is what
``tools/export_onnx.py`` checks when it writes them.)

Training (``--train-config``, default ViT-B/16; ``--train-batch`` images of ``--train-size``
pixels with ``--train-segments`` ground-truth segments each; the config's proposals):
  one forward + backward + AdamW step of the RMA weights, "ours" (the MaskCLIP Visual
  Encoder) against "dense_reference" (the same model with the encoder computed as the
  authors' code does, maskclip_d2/modeling/encoder/dense_reference.py); ``*_s`` the fastest of
  ``--train-repeats`` iterations, ``*_peak_mb`` the peak memory of one iteration beyond what
  was allocated before it (CUDA: ``max_memory_allocated``; CPU: the CPU allocator's running
  total as ``torch.profiler`` reports it).

Usage:
  python benchmarks/benchmark_model.py                                # paper config, CPU
  python benchmarks/benchmark_model.py --config-file configs/coco/maskclip_vitb16.yaml --device cuda
  python benchmarks/benchmark_model.py --json out.json --threads 2 --repeats 3
"""
import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

STAGES = ("proposals", "clip_input", "encoder", "text_logits")
# Post-processing steps timed one by one: functions the meta-architecture calls by name.
POSTPROCESSING_STEPS = ("semantic_inference", "panoptic_inference", "instance_inference")
VARIANTS = {
    "ours": [],
    "text_tower_resident": ["MODEL.CLIP.TEXT_TOWER_DEVICE", "", "MODEL.CLIP.RELEASE_TEXT_TOWER", "False"],
    "text_tower_in_memory": ["MODEL.CLIP.TEXT_TOWER_DEVICE", "", "MODEL.CLIP.RELEASE_TEXT_TOWER", "False",
                             "MODEL.CLIP.OFFLOAD_TEXT_TOWER", "False"],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs/coco/maskclip_vitl14_336.yaml"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--image-size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    parser.add_argument("--classes", type=int, default=150, help="vocabulary size (ADE20K-150's names)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
        help="inference precisions (MODEL.MASKCLIP.INFERENCE_DTYPE), timed round-robin in each "
        "variant's process; the first is the reference of the bounds",
    )
    parser.add_argument(
        "--no-kernels", action="store_true",
        help="skip the oneDNN kernel census (CPU: one forward per dtype with oneDNN's verbose log)",
    )
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--train-config", default=os.path.join(REPO, "configs/coco/maskclip_vitb16.yaml"))
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=1024, help="training image side (LSJ crop)")
    parser.add_argument("--train-segments", type=int, default=20, help="ground-truth segments per image")
    parser.add_argument("--train-repeats", type=int, default=2)
    parser.add_argument("--onnx", nargs="+", default=[], metavar="GRAPH",
                        help="also time these exported image graphs with ONNX Runtime (tools/export_onnx.py "
                        "of the same config: NAME.onnx, NAME.int8.onnx), in processes of their own")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    parser.add_argument("--worker", choices=["inference", "training", "kernels", "checkpoint", "onnx"], help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="ours", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---- helpers shared by the workers ----------------------------------------------------------
def build(config_file, opts, device, vocabulary):
    from detectron2.modeling import build_model

    from maskclip_d2.config import get_maskclip_cfg

    cfg = get_maskclip_cfg(config_file, [
        "MODEL.CLIP.WEIGHTS", "random", "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", "", "MODEL.WEIGHTS", "",
        "MODEL.DEVICE", device, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *opts,
    ])
    cfg.MODEL.MASKCLIP.VOCABULARY = list(vocabulary)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def vocabulary(num_classes):
    """ADE20K-150's class names (Detectron2's list; the first 100 taken as things), repeated
    with a suffix beyond 150."""
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES as names

    names = [names[i % len(names)] + ("" if i < len(names) else f" {i // len(names)}") for i in range(num_classes)]
    return names, [i < 100 for i in range(num_classes)]


def photo(height, width):
    """(3, H, W) uint8 RGB: a real photograph (scikit-image's astronaut) resized."""
    import torch.nn.functional as F
    from skimage import data

    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()
    return F.interpolate(image[None], (height, width), mode="bilinear", align_corners=False)[0].round().byte()


def rss_gb(field="VmRSS"):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak_rss():
    """Resets the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class StageClock:
    """Wall time per named stage, by wrapping callables (CUDA synchronised at each edge)."""

    def __init__(self, device):
        self.cuda = device == "cuda"
        self.times = {}

    def now(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[name] = self.times.get(name, 0.0) + self.now() - start
        return timed


def parameter_gb(module, device_type=None):
    return sum(
        p.numel() * p.element_size() for p in module.parameters()
        if p.device.type != "meta" and (device_type is None or p.device.type == device_type)
    ) / 2**30


def file_mb(path):
    return os.path.getsize(path) / 2**20


# ---- inference worker -----------------------------------------------------------------------
def inference_worker(args):
    import maskclip_d2.modeling.maskclip as meta_arch

    device = args.device
    names, is_thing = vocabulary(args.classes)
    cfg, model = build(args.config_file, VARIANTS[args.variant] + args.opts, device, names)
    model.eval()
    model.set_vocabulary(names, is_thing)
    result = {"variant": args.variant, "rss_after_build_gb": rss_gb()}

    gc.collect()

    start = time.perf_counter()
    with torch.no_grad():
        model.fix_vocabularies([names])  # as train_net.py --eval-only does
    result["text_embedding_s"] = time.perf_counter() - start
    result["text_tower_released"] = bool(model.text_encoder.tower_released)
    result["text_tower_device"] = str(model.text_encoder.tower_home)
    gc.collect()
    result["rss_before_inference_gb"] = rss_gb()
    result["parameters_resident_gb"] = parameter_gb(model)
    if device == "cuda":
        result["cuda_weights_gb"] = torch.cuda.memory_allocated() / 2**30

    height, width = args.image_size
    inputs = [{"image": photo(height, width), "height": height, "width": width}]
    clock = StageClock(device)
    model.proposal_network.forward = clock.wrap("proposals", model.proposal_network.forward)
    model.clip_images = clock.wrap("clip_input", model.clip_images)
    model.encoder.forward = clock.wrap("encoder", model.encoder.forward)
    model.text_encoder.forward = clock.wrap("text_logits", model.text_encoder.forward)
    originals = {step: getattr(meta_arch, step) for step in POSTPROCESSING_STEPS if hasattr(meta_arch, step)}
    for step, fn in originals.items():
        setattr(meta_arch, step, clock.wrap(step, fn))
    # Per dtype: one more forward's post-processing inputs, features, logits and outputs, for
    # the bounds and the tasks' reference; recorded after the timed forwards, so that what
    # is kept (about 0.6 GB per dtype at the paper size) counts in no forward's peak.
    seen = {}
    inference_one = model.inference_one
    classify = model.text_encoder.classify

    def recording(class_probs, mask_probs):
        outputs = inference_one(class_probs, mask_probs)
        seen.setdefault(model.inference_dtype, {}).update(
            class_probs=class_probs, mask_probs=mask_probs, outputs=outputs)
        return outputs

    def recording_classify(features, embeddings, no_object=False):
        logits = classify(features, embeddings, no_object=no_object)
        seen.setdefault(model.inference_dtype, {}).update(features=features, class_logits=logits)
        return logits

    result["build_peak_rss_gb"] = rss_gb("VmHWM")  # the build and the embedding, before any reset
    try:
        forwards = timed_forwards(model, inputs, clock, device, args.repeats, result, args.dtypes)
    finally:
        for step, fn in originals.items():
            setattr(meta_arch, step, fn)
    if device == "cuda":  # the timed forwards' peak, before the recording forwards below
        result["cuda_inference_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    model.inference_one = recording
    model.text_encoder.classify = recording_classify
    with torch.no_grad():
        for dtype in args.dtypes:
            model.inference_dtype = dtype
            model(inputs)
    reference_dtype = args.dtypes[0]
    result.update(tasks_against_reference(model, inference_one, seen[reference_dtype], clock, args.repeats))
    result["dtypes"] = {}
    for dtype, runs in forwards.items():
        summary = dict(min(runs, key=lambda t: t["total_s"]))
        summary["inference_peak_rss_gb"] = max(t.pop("peak_rss_gb") for t in runs)
        summary.pop("peak_rss_gb", None)
        summary["post_processing_share_median"] = statistics.median(t["post_processing_share"] for t in runs)
        summary["forwards"] = runs
        if dtype != reference_dtype:
            summary["bounds"] = dtype_bounds(seen[reference_dtype], seen[dtype])
        result["dtypes"][dtype] = summary
    # the reference dtype's figures at the top level, as before --dtypes
    result.update({k: v for k, v in result["dtypes"][reference_dtype].items() if k != "bounds"})
    # the process's peak: the build's and warm-ups', or a timed forward's (ru_maxrss would
    # follow the resets of VmHWM); without resets (no /proc/self/clear_refs), ru_maxrss itself
    if result["peak_rss_reset"]:
        result["peak_rss_gb"] = max(result["warmup_peak_rss_gb"],
                                    *(d["inference_peak_rss_gb"] for d in result["dtypes"].values()))
    else:
        result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def dtype_bounds(reference, other):
    """How close another precision's last forward is to the reference's: mask features by
    cosine (min / mean over masks), class argmax per mask (vocabulary + no-object), the
    semantic map's argmax per pixel, the output masks' pixels (> 0.5) per mask."""
    import torch.nn.functional as F

    cosine = F.cosine_similarity(other["features"].float(), reference["features"].float(), dim=-1)
    argmax = other["class_logits"].argmax(-1) == reference["class_logits"].argmax(-1)
    bounds = {
        "mask_feature_cosine_min": float(cosine.min()), "mask_feature_cosine_mean": float(cosine.mean()),
        "class_argmax_agreement": float(argmax.float().mean()), "masks": int(argmax.numel()),
        "mask_pixel_agreement": float(((other["mask_probs"] > 0.5) == (reference["mask_probs"] > 0.5)).float().mean()),
    }
    if "sem_seg" in reference["outputs"]:
        bounds["semantic_pixel_agreement"] = float(
            (other["outputs"]["sem_seg"].argmax(0) == reference["outputs"]["sem_seg"].argmax(0)).float().mean())
    return bounds


def tasks_against_reference(model, inference_one, seen, clock, repeats):
    """The post-processing tasks of one image, ours against the reference implementation."""
    from maskclip_d2.modeling import postprocessing_reference as reference

    class_probs, mask_probs = seen["class_probs"], seen["mask_probs"]

    def ours():
        inference_one(class_probs, mask_probs)

    def theirs():
        if model.semantic_on:
            reference.semantic_inference(class_probs, mask_probs)
        if model.panoptic_on:
            reference.panoptic_inference(
                class_probs, mask_probs, model.is_thing, model.object_mask_threshold,
                model.overlap_threshold, model.overlap_rule,
            )
        if model.instance_on:
            reference.instance_inference(
                class_probs, mask_probs, model.detections_per_image, model.is_thing,
                model.instance_thing_filter,
            )

    times = {"tasks_s": [], "reference_tasks_s": []}
    with torch.no_grad():
        for _ in range(repeats):
            for name, fn in (("tasks_s", ours), ("reference_tasks_s", theirs)):
                start = clock.now()
                fn()
                times[name].append(clock.now() - start)
    result = {name: min(values) for name, values in times.items()}
    result["tasks_over_reference"] = result["tasks_s"] / result["reference_tasks_s"]
    scores, labels = class_probs.max(-1)
    kept = (labels != class_probs.shape[-1] - 1) & (scores > model.object_mask_threshold)
    result["panoptic_masks_kept"] = int(kept.sum())
    return result


def timed_forwards(model, inputs, clock, device, repeats, result, dtypes):
    """{dtype: [per forward: total and stage times, peak RSS of that forward]}: the dtypes
    round-robin (load from other processes hits them alike), one warm-up each first."""
    forwards = {dtype: [] for dtype in dtypes}
    with torch.no_grad():
        for dtype in dtypes:
            model.inference_dtype = dtype
            model(inputs)  # warm-up
        result["warmup_peak_rss_gb"] = rss_gb("VmHWM")  # the build and the warm-ups, before any reset
        gc.collect()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            for dtype in dtypes:
                model.inference_dtype = dtype
                gc.collect()
                result["peak_rss_reset"] = reset_peak_rss()
                clock.times = {}
                start = clock.now()
                model(inputs)
                total = clock.now() - start
                times = {"total_s": total, **{f"{k}_s": v for k, v in clock.times.items()}}
                times["post_processing_s"] = total - sum(clock.times.get(s, 0.0) for s in STAGES)
                times["post_processing_share"] = times["post_processing_s"] / total
                times["peak_rss_gb"] = rss_gb("VmHWM") if result["peak_rss_reset"] else float("nan")
                forwards[dtype].append(times)
    return forwards


# ---- checkpoint worker ----------------------------------------------------------------------
def checkpoint_worker(args):
    """The sizes of the checkpoints training writes for this model, in a process of its own:
    saving pickles every weight and allocates AdamW's moments, memory the allocator keeps, which
    would otherwise count in the inference processes' peak resident memory."""
    from detectron2.checkpoint import DetectionCheckpointer

    from maskclip_d2.checkpoint import StrictCheckpointer

    names, _ = vocabulary(args.classes)
    cfg, model = build(args.config_file, args.opts, args.device, names)
    result = {}
    # What training saves (weights + AdamW state) with the config naming
    # CLIP's and the proposal network's weights, and with every weight (Detectron2's).
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable:
        optimizer = torch.optim.AdamW(trainable)
        for p in trainable:
            p.grad = torch.zeros_like(p)
        optimizer.step()  # creates the moments a training checkpoint holds
        model.zero_grad(set_to_none=True)
        with tempfile.TemporaryDirectory() as tmp:
            model.clip_weights = "MODEL.CLIP.WEIGHTS (benchmark)"
            model.proposal_weights = "MODEL.MASKCLIP.PROPOSAL_WEIGHTS (benchmark)"
            StrictCheckpointer(model, tmp, optimizer=optimizer).save("model")
            result["checkpoint_mb"] = file_mb(os.path.join(tmp, "model.pth"))
            DetectionCheckpointer(model, tmp, optimizer=optimizer).save("full")
            result["full_checkpoint_mb"] = file_mb(os.path.join(tmp, "full.pth"))
            model.clip_weights = model.proposal_weights = None
        del optimizer
    return result


# ---- ONNX Runtime worker ---------------------------------------------------------------------
def onnx_worker(args):
    """An exported graph (``tools/export_onnx.py``, float32 or ``--int8``) run by ONNX Runtime
    through ``ONNXRuntimeMaskCLIP`` on the same photograph and vocabulary: the graph (proposals
    + encoder + class logits) and the post-processing timed, the peak RSS of each forward."""
    from maskclip_d2.deploy import ONNXRuntimeMaskCLIP, external_data_path

    path = args.variant
    model = ONNXRuntimeMaskCLIP(path, num_threads=args.threads).eval()
    names, is_thing = vocabulary(args.classes)
    model.set_vocabulary(names, is_thing)
    with torch.no_grad():
        model.text_encoder.encode_vocabulary(names)  # embedded once by the text graph, then cached
    files = [f for f in (path, external_data_path(path)) if os.path.isfile(f)]
    result = {"graph": path, "graph_mb": sum(file_mb(f) for f in files), "rss_before_inference_gb": rss_gb()}
    height, width = args.image_size
    inputs = [{"image": photo(height, width), "height": height, "width": width}]
    clock = StageClock(args.device)
    model.predict = clock.wrap("graph", model.predict)
    runs = []
    with torch.no_grad():
        model(inputs)  # warm-up
        for _ in range(args.repeats):
            gc.collect()
            reset = reset_peak_rss()
            clock.times = {}
            start = clock.now()
            model(inputs)
            total = clock.now() - start
            runs.append({"total_s": total, "graph_s": clock.times["graph"],
                         "post_processing_s": total - clock.times["graph"],
                         "peak_rss_gb": rss_gb("VmHWM") if reset else float("nan")})
    result.update(min(runs, key=lambda t: t["total_s"]))
    result["inference_peak_rss_gb"] = max(t["peak_rss_gb"] for t in runs)
    result["forwards"] = runs
    return result


# ---- kernel census worker -------------------------------------------------------------------
def onednn_log(fn):
    """The lines oneDNN's verbose mode prints while ``fn()`` runs (it writes to the process's
    stdout file descriptor, redirected to a temporary file meanwhile)."""
    import ctypes

    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                fn()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        return log.read().splitlines()


def kernel_census(lines):
    """oneDNN's verbose lines -> {"isa": the CPU ISA oneDNN dispatches to, "kernels":
    {"kind implementation (source dtype)": [calls, ms]}, "amx": any AMX kernel ran}."""
    census = {"isa": None, "kernels": {}}
    for line in lines:
        fields = line.split(",")
        if "info" in fields and any(f.startswith("isa:") for f in fields):
            census["isa"] = next(f[4:] for f in fields if f.startswith("isa:"))
        if "exec" not in fields:
            continue
        i = fields.index("exec")
        kind, implementation = fields[i + 2], fields[i + 3]
        source = next((d.split(":")[1] for d in fields[i + 5].split() if d.startswith("src:")), "?")
        key = f"{kind} {implementation} ({source})"
        calls, ms = census["kernels"].get(key, [0, 0.0])
        try:
            ms += float(fields[-1])
        except ValueError:
            pass
        census["kernels"][key] = [calls + 1, ms]
    census["kernels"] = dict(sorted(census["kernels"].items(), key=lambda kv: -kv[1][1]))
    census["amx"] = any("amx" in key for key in census["kernels"])
    return census


def kernels_worker(args):
    """One forward per dtype with oneDNN's verbose log: which oneDNN kernels run (CPU). Float32
    matrix products go to MKL / the BLAS, outside oneDNN, and are not listed."""
    names, is_thing = vocabulary(args.classes)
    cfg, model = build(args.config_file, args.opts, "cpu", names)
    model.eval()
    model.set_vocabulary(names, is_thing)
    height, width = args.image_size
    inputs = [{"image": photo(height, width), "height": height, "width": width}]
    result = {}
    with torch.no_grad():
        model.fix_vocabularies([names])
        for dtype in args.dtypes:
            model.inference_dtype = dtype
            model(inputs)  # warm-up: oneDNN creates its primitives here
            result[dtype] = kernel_census(onednn_log(lambda: model(inputs)))
    isa = next((census["isa"] for census in result.values() if census["isa"]), None)
    for census in result.values():  # oneDNN names its ISA once per process
        census["isa"] = isa
    return result


# ---- training worker ------------------------------------------------------------------------
def training_inputs(batch, size, segments, num_classes, seed=0):
    """Mapped training inputs: a photograph and ``segments`` random rectangles per image,
    with classes of the vocabulary, as the panoptic LSJ mapper gives them."""
    from detectron2.structures import BitMasks, Instances

    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for b in range(batch):
        masks = torch.zeros(segments, size, size, dtype=torch.bool)
        corners = torch.randint(0, size, (segments, 4), generator=generator)
        for m, (y0, y1, x0, x1) in enumerate(corners.tolist()):
            masks[m, min(y0, y1):max(y0, y1) + 1, min(x0, x1):max(x0, x1) + 1] = True
        instances = Instances((size, size))
        instances.gt_masks = BitMasks(masks)
        instances.gt_classes = torch.randint(0, num_classes, (segments,), generator=generator)
        inputs.append({"image": photo(size, size), "instances": instances})
    return inputs


def training_worker(args):
    from maskclip_d2.utils.benchmark import peak_mb
    from maskclip_d2.modeling.encoder.dense_reference import dense_reference_forward

    device = args.device
    names, _ = vocabulary(133)  # COCO panoptic's vocabulary size
    cfg, model = build(args.train_config, args.opts, device, names)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    inputs = training_inputs(args.train_batch, args.train_size, args.train_segments, len(names))
    encoder = model.encoder
    # The dense reference with gradients (its module-level function runs under no_grad).
    dense = getattr(dense_reference_forward, "__wrapped__", dense_reference_forward)
    paths = {"ours": encoder.forward, "dense_reference": lambda images, masks: dense(encoder, images, masks)}

    def iteration(path):
        model.encoder.forward = paths[path]
        losses = model(inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()

    def timed(path):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        iteration(path)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    result = {
        "clip": cfg.MODEL.CLIP.NAME, "batch": args.train_batch, "image_size": args.train_size,
        "proposals": cfg.MODEL.MASKCLIP.NUM_PROPOSALS, "segments_per_image": args.train_segments,
        "trainable_parameters": sum(p.numel() for p in params),
    }
    for path in paths:  # warm-up (also creates AdamW's state, part of every later iteration)
        timed(path)
    times = {path: [] for path in paths}
    for _ in range(args.train_repeats):
        for path in paths:  # round-robin: load from other processes hits both alike
            times[path].append(timed(path))
    for path in paths:
        result[f"{path}_s"] = min(times[path])
        result[f"{path}_peak_mb"] = peak_mb(lambda *_: iteration(path), None, None, device)
    result["time_ratio"] = result["ours_s"] / result["dense_reference_s"]
    result["peak_ratio"] = result["ours_peak_mb"] / result["dense_reference_peak_mb"]
    return result


# ---- driver ---------------------------------------------------------------------------------
def run_worker(args, kind, variant="ours"):
    argv = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--variant", variant,
            "--config-file", args.config_file, "--device", args.device,
            "--image-size", *map(str, args.image_size), "--classes", str(args.classes),
            "--repeats", str(args.repeats), "--train-config", args.train_config,
            "--train-batch", str(args.train_batch), "--train-size", str(args.train_size),
            "--train-segments", str(args.train_segments), "--train-repeats", str(args.train_repeats),
            "--dtypes", *args.dtypes]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.opts:
        argv += ["--opts", *args.opts]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"the {kind} worker ({variant}) failed:\n{run.stderr[-4000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        import logging

        logging.disable(logging.WARNING)  # "CLIP has RANDOM weights": known, and intended here
        worker = {"inference": inference_worker, "training": training_worker, "kernels": kernels_worker,
                  "checkpoint": checkpoint_worker, "onnx": onnx_worker}[args.worker]
        print(json.dumps(worker(args)))
        return

    from maskclip_d2.config import get_maskclip_cfg

    cfg = get_maskclip_cfg(args.config_file, args.opts)
    results = {
        "config": os.path.relpath(args.config_file, REPO), "clip": cfg.MODEL.CLIP.NAME,
        "device": args.device, "threads": args.threads or torch.get_num_threads(),
        "image_size": args.image_size, "proposals": cfg.MODEL.MASKCLIP.NUM_PROPOSALS,
        "classes": args.classes, "repeats": args.repeats, "dtypes": args.dtypes,
        "cpu_load_average": os.getloadavg(), "cpu_count": os.cpu_count(),
    }
    if not args.no_inference:
        results["inference"] = {v: run_worker(args, "inference", v) for v in args.variants}
        results["checkpoint"] = run_worker(args, "checkpoint")
        if args.onnx:
            results["onnx"] = {path: run_worker(args, "onnx", path) for path in args.onnx}
        if args.device == "cpu" and not args.no_kernels:
            results["kernels"] = run_worker(args, "kernels")
    if not args.no_training:
        results["training"] = run_worker(args, "training")
    if args.json:
        from maskclip_d2.utils import atomic_write

        with atomic_write(args.json) as tmp:
            with open(tmp, "w") as f:
                json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    report(results)


def report(results):
    """A short table after the JSON."""
    print(f"\n{results['clip']} ({results['config']}), {results['device']}, {results['threads']} threads, "
          f"image {results['image_size'][0]} x {results['image_size'][1]}, {results['proposals']} proposals, "
          f"{results['classes']} classes")
    for variant, r in results.get("inference", {}).items():
        stages = ", ".join(f"{s} {r.get(s + '_s', 0):.2f}" for s in (*STAGES, "post_processing"))
        tasks = ", ".join(f"{s.split('_')[0]} {r[s + '_s']:.2f}" for s in POSTPROCESSING_STEPS if s + "_s" in r)
        print(f"  {variant}: total {r['total_s']:.2f} s ({stages}; tasks: {tasks}); post-processing "
              f"{100 * r['post_processing_share']:.1f}% of total; peak RSS {r['peak_rss_gb']:.2f} GB "
              f"(inference {r['inference_peak_rss_gb']:.2f} GB); tasks {r['tasks_s']:.2f} s vs reference "
              f"{r['reference_tasks_s']:.2f} s (x{r['tasks_over_reference']:.2f}, {r['panoptic_masks_kept']} masks kept)")
    if "checkpoint" in results:
        c = results["checkpoint"]
        print(f"  checkpoint {c['checkpoint_mb']:.1f} MB (full {c['full_checkpoint_mb']:.1f} MB)")
    dtype_table(results)
    backend_table(results)
    if "training" in results:
        t = results["training"]
        print(f"  training, {t['clip']}, batch {t['batch']} x {t['image_size']} px: ours {t['ours_s']:.2f} s, "
              f"{t['ours_peak_mb']:.0f} MB; dense reference {t['dense_reference_s']:.2f} s, "
              f"{t['dense_reference_peak_mb']:.0f} MB (time x{t['time_ratio']:.2f}, memory x{t['peak_ratio']:.2f})")



def backend_table(results):
    """PyTorch float32 / bfloat16 (variant "ours") and the ONNX Runtime graphs in one table:
    seconds per image and the ratio to PyTorch float32, the peak RSS of a forward."""
    ours = results.get("inference", {}).get("ours")
    if not results.get("onnx") or not ours or "dtypes" not in ours:
        return
    base = ours["dtypes"][results["dtypes"][0]]["total_s"]
    print("\n| backend | precision | total s | x PyTorch " + results["dtypes"][0] + " | networks s | "
          "post_processing s | forward peak RSS GB | file MB |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in results["dtypes"]:
        d = ours["dtypes"][dtype]
        networks = d["total_s"] - d["post_processing_s"]
        print(f"| PyTorch | {dtype} | {d['total_s']:.2f} | {d['total_s'] / base:.2f} | {networks:.2f} | "
              f"{d['post_processing_s']:.2f} | {d['inference_peak_rss_gb']:.2f} | |")
    for path, r in results["onnx"].items():
        precision = "int8 (dynamic)" if path.endswith(".int8.onnx") else "float32"
        print(f"| ONNX Runtime | {precision} | {r['total_s']:.2f} | {r['total_s'] / base:.2f} | {r['graph_s']:.2f} | "
              f"{r['post_processing_s']:.2f} | {r['inference_peak_rss_gb']:.2f} | {r['graph_mb']:.0f} |")


def dtype_table(results):
    """Per variant and dtype: seconds per stage and the ratio to the first dtype, the peak RSS
    of one forward; the bounds against the first dtype; the oneDNN kernels that ran."""
    dtypes = results.get("dtypes", [])
    columns = ("total", *STAGES, "post_processing")
    for variant, r in results.get("inference", {}).items():
        if "dtypes" not in r:
            continue
        print(f"\n{variant} (peak RSS of the process, build included: {r['peak_rss_gb']:.2f} GB)")
        print("| dtype | " + " | ".join(f"{c} s" for c in columns) + " | forward peak RSS GB |")
        print("|---" * (len(columns) + 2) + "|")
        first = r["dtypes"][dtypes[0]]
        for dtype in dtypes:
            d = r["dtypes"][dtype]
            cells = [f"{d.get(c + '_s', 0):.2f}" + ("" if dtype == dtypes[0] else
                     f" (x{d.get(c + '_s', 0) / max(first.get(c + '_s', 0), 1e-9):.2f})") for c in columns]
            print(f"| {dtype} | " + " | ".join(cells) + f" | {d['inference_peak_rss_gb']:.2f} |")
        for dtype in dtypes[1:]:
            b = r["dtypes"][dtype]["bounds"]
            print(f"  {dtype} vs {dtypes[0]}: mask-feature cosine min {b['mask_feature_cosine_min']:.5f} "
                  f"(mean {b['mask_feature_cosine_mean']:.5f}); class argmax equal for "
                  f"{100 * b['class_argmax_agreement']:.1f}% of {b['masks']} masks; output-mask pixels "
                  f"{100 * b['mask_pixel_agreement']:.2f}%; semantic argmax pixels "
                  f"{100 * b.get('semantic_pixel_agreement', float('nan')):.2f}%")
    for dtype, census in results.get("kernels", {}).items():
        top = list(census["kernels"].items())[:6]
        print(f"\noneDNN kernels, {dtype} (ISA {census['isa']}; AMX kernels: {'yes' if census['amx'] else 'none'}):")
        for key, (calls, ms) in top:
            print(f"  {key}: {calls} calls, {ms / 1000:.2f} s")


if __name__ == "__main__":
    main()
