#!/usr/bin/env python
"""The CUDA path of maskclip-d2, checked and timed in one command: one JSON + one log.

On a GPU machine (docs/BENCHMARKS.md, "GPU figures"). One without a package index gets the
wheels it lacks from ``.gpu_wheelhouse``, built beforehand on a machine with the index by
``benchmarks/gpu_wheelhouse.py prepare`` and copied along with the checkout:

    python3 benchmarks/gpu_check.py --wheelhouse .gpu_wheelhouse --output gpu_check.json

On the CPU, the same sections at tiny sizes (tests/benchmarks/test_gpu_check.py runs this):

    python benchmarks/gpu_check.py --device cpu --smoke --output output/gpu_check_smoke.json

Sections, in this order (each one is saved as soon as it ends; one that raises is reported
with its traceback and the others still run):

  environment      versions, GPU, TF32 settings, what was installed from the wheelhouse;
  equality         float32 on the device against the CPU, same weights and inputs (TF32 off):
                   the MaskCLIP Visual Encoder (rma with random non-zero RMA weights,
                   mask_tokens) and, on the device, against the dense reference; the text
                   encoder; the proposal network; the full tiny model (configs/tiny);
  autocast         the encoder under bfloat16 / float16 autocast against its float32 output;
  sdpa             which scaled_dot_product_attention kernel the encoder's calls run (profiled
                   on the encoder itself) and, for each of its three call shapes, the time of
                   every backend (flash, memory-efficient, cuDNN, math) or why it refused;
  encoder_speed    ms per image with ``masks`` masks: plain CLIP, mask_tokens, rma, the CLIP
                   Baseline and the dense reference (benchmarks/benchmark_encoder.py), float32 and
                   bfloat16 autocast, with peak memory;
  inference_speed  the full model (paper config, random weights) on one 640 x 853 image;
  stage2_training  MaskCLIP training iterations, batch 8 of 1024 px crops: seconds, peak memory
                   (on CUDA Detectron2's AMPTrainer, then SimpleTrainer in float32; on the
                   CPU SimpleTrainer only, AMP off);
  stage1_training  the class-agnostic Mask2Former (R50), batch 4 of 1024 px crops, and the
                   share of the iteration spent in its multi-scale deformable attention
                   (the MSDeformAttn calls of one iteration replayed forward + backward alone).

The log ends with the rows of docs/BENCHMARKS.md's "GPU figures" table, filled from the JSON.
Random weights throughout: speed and the equalities do not depend on trained values. With
``--smoke`` every size is tiny (tiny CLIP and Mask2Former, a few masks, 128 px images).
The exit status is 0 only when no section raised and every equality and bound holds.
"""
import argparse
import contextlib
import copy
import dataclasses
import datetime
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SECTIONS = ("environment", "equality", "autocast", "sdpa", "encoder_speed", "inference_speed",
            "stage2_training", "stage1_training")

# Float32 on the device against the CPU: max |device - cpu| / max |cpu| per output.
FP32_RTOL = {
    "encoder": 1e-4,  # 24 ViT-L layers, M mask tokens, 4 RMA layers
    "dense_reference": 1e-4,  # the encoder against the authors' dense construction
    "text": 1e-5,  # unit-norm text embeddings
    # Mask2Former's masked attention thresholds its own mask logits: a rounding difference
    # at a logit near 0 adds or drops one key of one query's attention, layer after layer.
    "proposals": 1e-2,
    "full_model": 1e-4,  # sem_seg probabilities of the tiny model
}
# Fraction of panoptic pixels with the same segment in both runs (full tiny model).
PANOPTIC_AGREEMENT = 0.999
# Autocast against float32, same device: min cosine of mask features, fraction of pixels on the
# same side of every refined mask (sigmoid >= 0.5).
AUTOCAST_MIN_COSINE = {"bfloat16": 0.99, "float16": 0.999}
AUTOCAST_MIN_MASK_AGREEMENT = {"bfloat16": 0.99, "float16": 0.995}


@dataclasses.dataclass(frozen=True)
class Sizes:
    clip: str  # CLIP architecture (random weights) of the encoder and text checks
    masks: int  # mask proposals per image
    vocabulary: int  # class names
    maskclip_config: str  # the full model: proposals equality, inference, stage 2
    stage1_config: str  # the class-agnostic Mask2Former of stage 1
    stage1_opts: Tuple[str, ...]
    image_size: Tuple[int, int]  # (height, width) of inference and proposal images
    train_size: int  # square training crops (INPUT.IMAGE_SIZE of the LSJ mapper)
    stage2_batch: int
    stage1_batch: int
    repeats: int  # timed forwards / iterations (after one warm-up)


PAPER = Sizes(
    clip="ViT-L/14@336px", masks=100, vocabulary=133,  # COCO panoptic's 133 classes
    maskclip_config="configs/coco/maskclip_vitl14_336.yaml",
    stage1_config="configs/coco/proposals/class_agnostic_mask2former_R50.yaml", stage1_opts=(),
    image_size=(640, 853),  # a 4:3 COCO image at the test size (short side 640)
    train_size=1024, stage2_batch=8, stage1_batch=4, repeats=5,
)
SMOKE = Sizes(
    clip="tiny", masks=6, vocabulary=5,
    maskclip_config="configs/tiny/maskclip_tiny.yaml",
    stage1_config="configs/tiny/maskclip_tiny.yaml",
    stage1_opts=("MODEL.META_ARCHITECTURE", "ClassAgnosticMask2Former"),
    image_size=(96, 128), train_size=128, stage2_batch=2, stage1_batch=2, repeats=2,
)
TINY_CONFIG = "configs/tiny/maskclip_tiny.yaml"

_NOUNS = ("person cat dog car tree sky grass road building wall table chair cup bottle window "
          "door floor ceiling water sea mountain sand snow boat bird horse sheep cow bus train "
          "truck bicycle kite umbrella book clock vase lamp bed sofa").split()
_ADJECTIVES = ("", "small ", "large ", "red ", "old ")


def class_names(count: int) -> List[str]:
    """``count`` distinct class names ("cat", ..., "small cat", ...)."""
    names = [a + n for a in _ADJECTIVES for n in _NOUNS]
    if count > len(names):
        raise ValueError(f"at most {len(names)} class names, {count} asked")
    return names[:count]


# ---- the report ------------------------------------------------------------------------------


class Report:
    """The JSON document and its log, both rewritten whole after every section."""

    def __init__(self, output: str, argv: Sequence[str]):
        self.output = output
        self.log_path = os.path.splitext(output)[0] + ".log"
        self.lines: List[str] = []
        self.data = {
            "format": 1,
            "command": " ".join(argv),
            "started": _now(),
            "sections": {},
        }

    def log(self, message: str = "") -> None:
        print(message, flush=True)
        self.lines.append(message)

    def save(self) -> None:
        atomic_write = _file_io().atomic_write
        self.data["saved"] = _now()
        with atomic_write(self.output) as tmp:
            with open(tmp, "w") as f:
                json.dump(self.data, f, indent=1, default=_jsonable)
                f.write("\n")
        with atomic_write(self.log_path) as tmp:
            with open(tmp, "w") as f:
                f.write("\n".join(self.lines) + "\n")

    def run_section(self, name: str, fn: Callable[[], Dict]) -> None:
        self.log(f"== {name}")
        start = time.perf_counter()
        try:
            result = fn()
            result["status"] = "failed" if _any_failed(result) else "ok"
        except Exception as e:  # reported, and the next sections still run
            result = {"status": "error", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()}
            self.log(result["traceback"])
        result["seconds"] = round(time.perf_counter() - start, 2)
        self.data["sections"][name] = result
        self.log(f"-- {name}: {result['status']} ({result['seconds']} s)")
        self.save()


def _file_io():
    """maskclip_d2/utils/file_io.py read on its own: the report is saved even when the package
    (detectron2, clip, ...) fails to import, which is then what the report says."""
    spec = importlib.util.spec_from_file_location(
        "maskclip_d2_file_io", os.path.join(REPO, "maskclip_d2", "utils", "file_io.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _jsonable(x):
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    if isinstance(x, (torch.device, os.PathLike)):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def _any_failed(result) -> bool:
    """A check anywhere in the result with ``"ok": False``."""
    if isinstance(result, dict):
        if result.get("ok") is False:
            return True
        return any(_any_failed(v) for v in result.values())
    if isinstance(result, list):
        return any(_any_failed(v) for v in result)
    return False


# ---- measuring -------------------------------------------------------------------------------


def compare(got: torch.Tensor, want: torch.Tensor, rtol: float) -> Dict:
    """max |got - want| / max |want| (both moved to the CPU in float64) against ``rtol``."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if got.shape != want.shape:
        return {"ok": False, "reason": f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"}
    finite = bool(torch.isfinite(got).all() and torch.isfinite(want).all())
    if got.numel() == 0:
        return {"ok": finite, "max_abs": 0.0, "scale": 1.0, "max_rel": 0.0, "mean_rel": 0.0, "rtol": rtol}
    difference = (got - want).abs()
    max_abs = difference.max().item()
    scale = want.abs().max().item() or 1.0
    return {"ok": finite and max_abs / scale <= rtol, "max_abs": max_abs, "scale": scale,
            "max_rel": max_abs / scale, "mean_rel": difference.mean().item() / scale, "rtol": rtol}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_runs(fn: Callable[[], object], repeats: int, device: str) -> List[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def summary_ms(times: Sequence[float]) -> Dict:
    return {"min_ms": round(1000 * min(times), 3), "median_ms": round(1000 * statistics.median(times), 3)}


@contextlib.contextmanager
def peak_memory(device: str, into: Dict):
    """Peak device memory allocated inside the block, beyond what was allocated before it, in
    MiB (CUDA only: ``None`` on the CPU)."""
    if device != "cuda":
        yield
        into["peak_mb"] = None
        return
    synchronize(device)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    yield
    synchronize(device)
    into["peak_mb"] = round((torch.cuda.max_memory_allocated() - before) / 2**20, 1)


def autocast(device: str, dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``dtype``, or nothing for ``None`` (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=dtype)


@contextlib.contextmanager
def strict_float32():
    """TF32 off for matmuls and cuDNN convolutions: float32 means float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ---- models and inputs -----------------------------------------------------------------------


def random_clip(name: str):
    from maskclip_d2.modeling import build_clip_model

    torch.manual_seed(0)
    return build_clip_model(name, weights="random")


def rma_encoder(visual, mode: str, refine_chunk_size: int = 4):
    """The encoder over ``visual``; in "rma" mode its RMA weights get PyTorch's default
    initialisation instead of the zeros an untrained layer starts from, so RMA changes the
    logits and the masks."""
    from maskclip_d2.modeling import MaskCLIPVisualEncoder

    encoder = MaskCLIPVisualEncoder(visual, mode=mode, refine_chunk_size=refine_chunk_size)
    torch.manual_seed(1)
    for module in encoder.rma_layers.modules():
        if isinstance(module, torch.nn.Linear):
            module.reset_parameters()
    return encoder.eval()


def encoder_inputs(visual, masks: int, batch: int = 1):
    from maskclip_d2.utils.benchmark import random_masks

    R = visual.input_resolution
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, R, R, generator=generator)
    return images, random_masks(batch, masks, R, generator)


def model_cfg(config: str, device: str, opts: Sequence[str] = (), vocabulary=None):
    """A config for a random-weight model on ``device``: nothing loaded, no dataset."""
    from maskclip_d2.config import get_maskclip_cfg, shapes_only

    cfg = shapes_only(get_maskclip_cfg(os.path.join(REPO, config), list(opts)))
    if vocabulary is not None:
        cfg.MODEL.MASKCLIP.VOCABULARY = list(vocabulary)
    cfg.MODEL.DEVICE = device
    return cfg


def build(cfg):
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def image_inputs(count: int, size: Tuple[int, int], num_classes: int = 0, masks: int = 0,
                 seed: int = 0) -> List[Dict]:
    """Detectron2 input dicts: random uint8 images and, with ``masks``, ``instances`` holding
    that many random rectangles of random classes (as the panoptic mapper gives them)."""
    from detectron2.structures import BitMasks, Instances

    g = torch.Generator().manual_seed(seed)
    height, width = size
    inputs = []
    for _ in range(count):
        x = {"image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
             "height": height, "width": width}
        if masks:
            gt = torch.zeros(masks, height, width, dtype=torch.bool)
            for m in gt:
                y0, x0 = (torch.randint(0, s // 2, (1,), generator=g).item() for s in (height, width))
                h, w = (torch.randint(s // 8, s // 2, (1,), generator=g).item() for s in (height, width))
                m[y0:y0 + h, x0:x0 + w] = True
            instances = Instances((height, width))
            instances.gt_masks = BitMasks(gt)
            instances.gt_classes = torch.randint(0, max(num_classes, 1), (masks,), generator=g)
            x["instances"] = instances
        inputs.append(x)
    return inputs


# ---- sections --------------------------------------------------------------------------------


def environment(args, sizes: Sizes, installed: Optional[Dict]) -> Dict:
    import numpy

    import detectron2

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__,
        "detectron2": detectron2.__version__,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "mode": "smoke" if args.smoke else "paper",
        "sizes": dataclasses.asdict(sizes),
        "tolerances": {"fp32_rtol": FP32_RTOL, "panoptic_agreement": PANOPTIC_AGREEMENT,
                       "autocast_min_cosine": AUTOCAST_MIN_COSINE,
                       "autocast_min_mask_agreement": AUTOCAST_MIN_MASK_AGREEMENT},
        "wheelhouse": installed,
        # the defaults the speed sections run with (the equality section turns TF32 off)
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    return env


def equality(device: str, sizes: Sizes, log) -> Dict:
    """Float32 on ``device`` against the CPU (on the CPU: against a second copy of itself, which
    runs the same code; the dense reference comparison holds on either)."""
    from maskclip_d2.modeling import CLIPTextEncoder
    from maskclip_d2.modeling.clip.openai_loader import CLIP_ARCHITECTURES
    from maskclip_d2.modeling.encoder.dense_reference import dense_reference_forward
    from maskclip_d2.modeling.proposals.sources import build_proposal_network, crop_and_resize

    checks = {}
    with strict_float32(), torch.no_grad():
        clip_model = random_clip(sizes.clip)
        images, masks = encoder_inputs(clip_model.visual, sizes.masks)
        for mode in ("rma", "mask_tokens"):
            cpu_encoder = rma_encoder(clip_model.visual, mode)
            device_encoder = copy.deepcopy(cpu_encoder).to(device)
            want = cpu_encoder(images, masks)
            got = device_encoder(images.to(device), masks.to(device))
            dense = dense_reference_forward(device_encoder, images.to(device), masks.to(device))
            checks[f"encoder_{mode}_features"] = compare(got["features"], want["features"], FP32_RTOL["encoder"])
            checks[f"encoder_{mode}_dense_reference_features"] = compare(
                got["features"], dense["features"], FP32_RTOL["dense_reference"])
            for i, (g, w, d) in enumerate(zip(got["masks"], want["masks"], dense["masks"])):
                checks[f"encoder_{mode}_masks_{i}"] = compare(g, w, FP32_RTOL["encoder"])
                checks[f"encoder_{mode}_dense_reference_masks_{i}"] = compare(g, d, FP32_RTOL["dense_reference"])
            del device_encoder

        names = class_names(sizes.vocabulary)
        cpu_text = CLIPTextEncoder(clip_model)
        want = cpu_text.encode_vocabulary(names)
        got = copy.deepcopy(cpu_text).to(device).encode_vocabulary(names)
        checks["text_embeddings"] = compare(got, want, FP32_RTOL["text"])
        del clip_model, cpu_text

        # The proposal network's raw outputs in query order (the top-k by objectness would
        # reorder near ties), then the resampling to CLIP's resolution of the same logits.
        network = build_proposal_network(model_cfg(sizes.maskclip_config, "cpu")).network
        images = network.preprocess_image(image_inputs(1, sizes.image_size))
        want = network.propose(images.tensor)
        got = copy.deepcopy(network).to(device).propose(images.tensor.to(device))
        checks["proposal_mask_logits"] = compare(got[0], want[0], FP32_RTOL["proposals"])
        checks["proposal_objectness"] = compare(got[1], want[1], FP32_RTOL["proposals"])
        stride = images.tensor.shape[-1] / want[0].shape[-1]
        resolution = CLIP_ARCHITECTURES[sizes.clip].image_resolution
        checks["proposal_resampling"] = compare(
            crop_and_resize(want[0].to(device), images.image_sizes, stride, resolution),
            crop_and_resize(want[0], images.image_sizes, stride, resolution), FP32_RTOL["encoder"])
        del network

        cpu_model = build(model_cfg(TINY_CONFIG, "cpu")).eval()
        device_model = copy.deepcopy(cpu_model).to(device)
        inputs = image_inputs(2, (96, 128), seed=1)
        for b, (w, g) in enumerate(zip(cpu_model(inputs), device_model(inputs))):
            checks[f"tiny_model_{b}_sem_seg"] = compare(g["sem_seg"], w["sem_seg"], FP32_RTOL["full_model"])
            same = (g["panoptic_seg"][0].cpu() == w["panoptic_seg"][0]).double().mean().item()
            checks[f"tiny_model_{b}_panoptic_pixels"] = {
                "ok": same >= PANOPTIC_AGREEMENT, "agreement": same, "min": PANOPTIC_AGREEMENT}
            checks[f"tiny_model_{b}_instance_scores"] = compare(
                g["instances"].scores.sort().values, w["instances"].scores.sort().values,
                FP32_RTOL["full_model"])
    for name, check in checks.items():
        if "max_rel" in check:
            measured = f"max rel {check['max_rel']:.2e} (tol {check['rtol']:g}), mean {check['mean_rel']:.1e}"
        else:
            measured = check.get("reason") or f"agreement {check['agreement']} (min {check['min']})"
        log(f"  {name:<44} {'ok    ' if check['ok'] else 'FAILED'} {measured}")
    return {"compared": f"float32 on {device} vs the CPU", "checks": checks}


def autocast_bounds(device: str, sizes: Sizes, log) -> Dict:
    """The encoder under autocast against its own float32 output on ``device``."""
    clip_model = random_clip(sizes.clip)
    images, masks = encoder_inputs(clip_model.visual, sizes.masks)
    images, masks = images.to(device), masks.to(device)
    checks = {}
    for mode in ("rma", "mask_tokens"):
        encoder = rma_encoder(clip_model.visual, mode).to(device)
        with torch.no_grad(), strict_float32():
            want = encoder(images, masks)
        for dtype in (torch.bfloat16, torch.float16):
            name = str(dtype).replace("torch.", "")
            with torch.no_grad(), autocast(device, dtype):
                got = encoder(images, masks)
            cosine = torch.nn.functional.cosine_similarity(
                got["features"].float(), want["features"].float(), dim=-1).min().item()
            check = {"feature_dtype": str(got["features"].dtype).replace("torch.", ""),
                     "min_cosine": cosine, "min_cosine_bound": AUTOCAST_MIN_COSINE[name],
                     "ok": cosine >= AUTOCAST_MIN_COSINE[name]}
            agreements = [((g.float() >= 0) == (w >= 0)).double().mean().item()
                          for g, w in zip(got["masks"], want["masks"])]
            if agreements:
                check.update(min_mask_agreement=min(agreements),
                             mask_agreement_bound=AUTOCAST_MIN_MASK_AGREEMENT[name],
                             mask_max_rel=compare(got["masks"][-1].float(), want["masks"][-1], 1.0)["max_rel"])
                check["ok"] = check["ok"] and min(agreements) >= AUTOCAST_MIN_MASK_AGREEMENT[name]
            checks[f"{mode}_{name}"] = check
            log(f"  {mode:<12}{name:<9} min cosine {cosine:.5f}"
                + (f", mask pixels agreeing {min(agreements):.5f}" if agreements else "")
                + ("" if check["ok"] else "  FAILED"))
    return {"compared": f"autocast vs float32 on {device}", "checks": checks}


_KERNEL_NAMES = (("flash", "flash"), ("efficient", "efficient"), ("cudnn", "cudnn"), ("math", "math"))


def sdpa_kernels_of(fn: Callable[[], object]) -> Dict[str, int]:
    """The scaled_dot_product_attention kernels (ATen ops) ``fn`` runs, with their counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {}
    for event in prof.key_averages():
        key = event.key
        if "dot_product" in key and key != "aten::scaled_dot_product_attention":
            counts[key] = counts.get(key, 0) + event.count
    return counts


def backend_of(kernels: Dict[str, int]) -> str:
    names = " ".join(kernels)
    return "+".join(label for word, label in _KERNEL_NAMES if word in names) or "none seen"


def _backend_times(call: Callable[[], torch.Tensor], repeats: int, device: str) -> Dict:
    """One SDPA call as PyTorch dispatches it ("default": the kernel it picks, its time) and
    forced to each backend in turn: its time and output, or its error and the reasons PyTorch
    gives (as warnings) for refusing it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = sdpa_kernels_of(call)
    times = timed_runs(call, repeats, device)
    result = {"default": {"runs": True, "backend": backend_of(kernels), "kernels": kernels,
                          **summary_ms(times)}}
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if not hasattr(SDPBackend, backend):
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([getattr(SDPBackend, backend)]):
                    output = call()
                    times = timed_runs(call, repeats, device)
                result[backend.lower()] = {"runs": True, **summary_ms(times), "output": output}
            except RuntimeError as e:
                result[backend.lower()] = {"runs": False, "error": str(e).splitlines()[0],
                                           "reasons": [str(w.message).splitlines()[0] for w in caught]}
    return result


def sdpa_probe(device: str, sizes: Sizes, log) -> Dict:
    """Which SDPA backend the encoder's attention runs, and what each backend costs on its three
    call shapes: image tokens (no mask), mask tokens (bool mask broadcast over heads) and RMA
    mask tokens (float mask per head)."""
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    clip_model = random_clip(sizes.clip)
    images, masks = encoder_inputs(clip_model.visual, sizes.masks)
    images, masks = images.to(device), masks.to(device)
    result = {"encoder": {}, "calls": {}}
    for mode in ("rma", "mask_tokens"):
        encoder = rma_encoder(clip_model.visual, mode).to(device)
        for dtype in (None, torch.bfloat16):
            name = "float32" if dtype is None else "bfloat16"
            with torch.no_grad(), autocast(device, dtype):
                kernels = sdpa_kernels_of(lambda: encoder(images, masks))
            result["encoder"][f"{mode}_{name}"] = {"kernels": kernels, "backend": backend_of(kernels)}
            log(f"  encoder {mode:<12}{name:<9} runs {backend_of(kernels)}: {kernels}")

    visual = clip_model.visual
    D = visual.conv1.out_channels
    H = visual.transformer.resblocks[0].attn.num_heads
    L = 1 + (visual.input_resolution // visual.conv1.kernel_size[0]) ** 2
    M = sizes.masks
    g = torch.Generator().manual_seed(0)
    # Laid out as the encoder lays them out: heads split from (B, T, D) by a transpose.
    q = torch.randn(1, L + M, D, generator=g).view(1, L + M, H, D // H).transpose(1, 2)
    k, v = torch.randn(2, 1, L, D, generator=g).view(2, 1, L, H, D // H).transpose(2, 3)
    visible = torch.rand(1, 1, M, L, generator=g) < 0.3
    visible[..., 0] = True
    relative = torch.randn(1, H, M, L, generator=g).masked_fill(~visible, float("-inf"))
    calls = {
        "image_tokens": (q[:, :, :L], None),
        "mask_tokens": (q[:, :, L:], visible),
        "rma_mask_tokens": (q[:, :, L:], relative),
    }
    repeats = max(sizes.repeats, 5) * 4  # sub-millisecond calls
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        name = str(dtype).replace("torch.", "")
        for call, (query, mask) in calls.items():
            q_, k_, v_ = (t.to(device, dtype) for t in (query, k, v))
            if mask is not None:
                mask = mask.to(device, dtype) if mask.is_floating_point() else mask.to(device)
            entry = _backend_times(lambda: sdpa(q_, k_, v_, attn_mask=mask), repeats, device)
            exact = sdpa(q_.double(), k_.double(), v_.double(),
                         attn_mask=mask.double() if mask is not None and mask.is_floating_point() else mask)
            for backend in entry.values():
                if "output" in backend:
                    backend["max_rel_vs_float64"] = compare(backend.pop("output"), exact, 1.0)["max_rel"]
            result["calls"][f"{call}_{name}"] = entry
            ran = ", ".join(f"{b} {e['min_ms']:.3f} ms" for b, e in entry.items()
                            if b != "default" and e["runs"])
            log(f"  {call:<16}{name:<9} default {entry['default']['backend']} "
                f"{entry['default']['min_ms']:.3f} ms; {ran}")
    result["shapes"] = {"batch": 1, "heads": H, "head_dim": D // H, "keys": L, "image_queries": L,
                        "mask_queries": M}
    return result


def encoder_speed(device: str, sizes: Sizes, log) -> Dict:
    """benchmarks/benchmark_encoder.py's five paths, in ms per image, float32 and bfloat16."""
    from maskclip_d2.utils.benchmark import PATHS, encoder_paths, peak_mb, time_round_robin

    clip_model = random_clip(sizes.clip).to(device)
    images, masks = encoder_inputs(clip_model.visual, sizes.masks)
    images, masks = images.to(device), masks.to(device)
    fns, _ = encoder_paths(clip_model.visual, 4, device)
    inputs = {p: (images, masks) for p in PATHS}
    result = {"clip": sizes.clip, "masks": sizes.masks, "repeats": sizes.repeats}
    for dtype in (None, torch.bfloat16):
        name = "float32" if dtype is None else "bfloat16"

        def under_autocast(fn):
            def run(*a):
                with autocast(device, dtype):
                    return fn(*a)
            return run

        paths = {p: under_autocast(fn) for p, fn in fns.items()}
        with torch.no_grad():
            times = time_round_robin(paths, inputs, sizes.repeats, device)
            rows = {p: {**summary_ms(times[p]), "peak_mb": round(peak_mb(paths[p], *inputs[p], device), 1)}
                    for p in PATHS}
        plain = rows["plain"]["min_ms"]
        for p in PATHS:
            rows[p]["x_plain"] = round(rows[p]["min_ms"] / plain, 3)
            log(f"  {name:<9}{p:<16}{rows[p]['min_ms']:>10.2f} ms  x{rows[p]['x_plain']:<7.2f}"
                f"peak {rows[p]['peak_mb']:.0f} MB")
        result[name] = rows
    return result


def inference_speed(device: str, sizes: Sizes, log) -> Dict:
    """The full model (``sizes.maskclip_config``, random weights) on one image, ms per image."""
    cfg = model_cfg(sizes.maskclip_config, device, vocabulary=class_names(sizes.vocabulary))
    model = build(cfg).eval()
    inputs = image_inputs(1, sizes.image_size)
    result = {"config": sizes.maskclip_config, "image_size": list(sizes.image_size),
              "vocabulary": sizes.vocabulary, "proposals": cfg.MODEL.MASKCLIP.NUM_PROPOSALS}
    for dtype in (None, torch.bfloat16):
        name = "float32" if dtype is None else "bfloat16"
        row = {}
        with torch.no_grad(), autocast(device, dtype), peak_memory(device, row):
            times = timed_runs(lambda: model(inputs), sizes.repeats, device)
        row.update(summary_ms(times))
        result[name] = row
        log(f"  {name:<9} {row['min_ms']:.1f} ms per image (median {row['median_ms']:.1f}), "
            f"peak {row['peak_mb']} MB")
    return result


def _train(model, cfg, batch: List[Dict], device: str, amp: bool, iterations: int,
           on_warmup: Optional[Callable[[], object]] = None) -> Dict:
    """Detectron2 training iterations on one repeated batch: one warm-up, then ``iterations``
    timed ones. The optimizer is train_net.py's (AdamW over the trainable parameters, full-model
    gradient clipping)."""
    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.utils.events import EventStorage

    from maskclip_d2.solver import build_optimizer

    optimizer = build_optimizer(cfg, model)
    loader = itertools.repeat(batch)
    trainer = (AMPTrainer if amp else SimpleTrainer)(model, loader, optimizer)
    losses = []
    row = {"amp": amp, "batch": len(batch)}
    with EventStorage(0) as storage:
        context = on_warmup() if on_warmup else contextlib.nullcontext()
        with context:
            trainer.run_step()
        synchronize(device)
        with peak_memory(device, row):
            times = []
            for _ in range(iterations):
                synchronize(device)
                start = time.perf_counter()
                trainer.run_step()
                synchronize(device)
                times.append(time.perf_counter() - start)
                storage.step()
                losses.append(storage.history("total_loss").latest())
    row.update(min_s=round(min(times), 4), median_s=round(statistics.median(times), 4),
               total_loss=losses, ok=all(math.isfinite(x) for x in losses))
    return row


def stage2_training(device: str, sizes: Sizes, log) -> Dict:
    names = class_names(sizes.vocabulary)
    cfg = model_cfg(sizes.maskclip_config, device, vocabulary=names)
    model = build(cfg).train()
    batch = image_inputs(sizes.stage2_batch, (sizes.train_size, sizes.train_size),
                         num_classes=len(names), masks=12)
    result = {"config": sizes.maskclip_config, "crop": sizes.train_size}
    modes = (True, False) if device == "cuda" else (False,)
    for amp in modes:
        row = _train(model, cfg, batch, device, amp, max(2, sizes.repeats // 2))
        result["amp" if amp else "float32"] = row
        log(f"  {'AMP' if amp else 'float32':<8} {row['min_s']:.3f} s per iteration of "
            f"{row['batch']}, peak {row['peak_mb']} MB, losses {row['total_loss']}")
    return result


def stage1_training(device: str, sizes: Sizes, log) -> Dict:
    """Stage-1 iterations, then the MSDeformAttn calls of the warm-up iteration replayed
    (forward + backward, float32 as the pixel decoder runs them) to give their share."""
    from maskclip_d2.modeling.proposals.pixel_decoder.ms_deform_attn import MSDeformAttn

    cfg = model_cfg(sizes.stage1_config, device, opts=sizes.stage1_opts)
    cfg.MODEL.WEIGHTS = ""
    model = build(cfg).train()
    batch = image_inputs(sizes.stage1_batch, (sizes.train_size, sizes.train_size), masks=12)
    calls = []

    def capture(module, args):
        calls.append((module, [a.detach().clone() if torch.is_tensor(a) else a for a in args]))

    @contextlib.contextmanager
    def capturing():
        hooks = [m.register_forward_pre_hook(capture) for m in model.modules()
                 if isinstance(m, MSDeformAttn)]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    amp = device == "cuda" and cfg.SOLVER.AMP.ENABLED
    row = _train(model, cfg, batch, device, amp, max(2, sizes.repeats // 2), on_warmup=capturing)
    result = {"config": sizes.stage1_config, "crop": sizes.train_size, "iteration": row}

    def replay():
        for module, args in calls:
            query, reference, flat = args[0].requires_grad_(), args[1], args[2].requires_grad_()
            out = module(query, reference, flat, *args[3:])
            out.backward(torch.ones_like(out))

    replay_times = timed_runs(replay, max(2, sizes.repeats // 2), device)
    share = min(replay_times) / row["min_s"]
    result["deformable_attention"] = {"calls": len(calls), **summary_ms(replay_times),
                                      "share_of_iteration": round(share, 4)}
    log(f"  {'AMP' if amp else 'float32'} {row['min_s']:.3f} s per iteration of {row['batch']}, "
        f"peak {row['peak_mb']} MB; {len(calls)} MSDeformAttn calls {min(replay_times) * 1000:.1f} ms "
        f"= {share:.1%} of it")
    return result


def readme_rows(data: Dict) -> List[str]:
    """The rows of docs/BENCHMARKS.md's "GPU figures" table, from the report ("-" where a section did
    not run or raised)."""
    sections = data["sections"]

    def get(*keys, fmt="{}"):
        value = sections
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return "-"
            value = value[key]
        return fmt.format(value)

    env = sections.get("environment", {})
    held = {n: sections[n]["status"] for n in ("equality", "autocast") if n in sections}
    speed = " / ".join(get("encoder_speed", "float32", p, "min_ms", fmt="{:.1f}") for p in
                       ("plain", "mask_tokens", "rma", "baseline", "dense_reference"))
    speed_bf16 = " / ".join(get("encoder_speed", "bfloat16", p, "min_ms", fmt="{:.1f}") for p in
                            ("plain", "mask_tokens", "rma", "baseline", "dense_reference"))

    def iteration(*keys):
        seconds, peak = get(*keys, "min_s", fmt="{:.3f} s"), get(*keys, "peak_mb")
        return seconds if peak in ("-", "None") else f"{seconds}, {float(peak) / 1024:.1f} GB"

    stage1 = iteration("stage1_training", "iteration")
    return [
        f"| date, GPU, command | {data['started'][:10]}, {env.get('gpu', env.get('device', '-'))}, "
        f"`{data['command']}` | |",
        f"| equalities within tolerance (CUDA vs CPU) | {held.get('equality', '-')} | "
        f"autocast bounds: {held.get('autocast', '-')} |",
        f"| encoder ms per image, {get('encoder_speed', 'masks')} masks: plain CLIP / mask_tokens / "
        f"rma / baseline / dense reference | {speed} | {speed_bf16} |",
        f"| SDPA kernel of the mask-token calls (mask_tokens / rma) | "
        f"{get('sdpa', 'encoder', 'mask_tokens_float32', 'backend')} / "
        f"{get('sdpa', 'encoder', 'rma_float32', 'backend')} | "
        f"{get('sdpa', 'encoder', 'mask_tokens_bfloat16', 'backend')} / "
        f"{get('sdpa', 'encoder', 'rma_bfloat16', 'backend')} |",
        f"| full model ms per {'x'.join(map(str, sections.get('inference_speed', {}).get('image_size', ['-'])))} "
        f"image | {get('inference_speed', 'float32', 'min_ms', fmt='{:.1f}')} | "
        f"{get('inference_speed', 'bfloat16', 'min_ms', fmt='{:.1f}')} |",
        f"| stage-2 iteration, batch {get('stage2_training', 'float32', 'batch')} (s, peak GB) | "
        f"{iteration('stage2_training', 'float32')} | {iteration('stage2_training', 'amp')} |",
        f"| stage-1 iteration, batch {get('stage1_training', 'iteration', 'batch')} (s, peak GB) | "
        + (f" | {stage1} |" if get("stage1_training", "iteration", "amp") == "True" else f"{stage1} | |"),
        f"| deformable attention share of a stage-1 iteration | "
        f"{get('stage1_training', 'deformable_attention', 'share_of_iteration', fmt='{:.1%}')} | |",
    ]


# ---- the command -----------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: every section in well under a minute on one CPU thread")
    parser.add_argument("--output", required=True,
                        help="the JSON to write; the log goes beside it (.log)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--wheelhouse", default=None,
                        help="install what this machine lacks from this folder first "
                             "(benchmarks/gpu_wheelhouse.py prepare builds it)")
    parser.add_argument("--install-target", default=None,
                        help="where --wheelhouse installs (default: a new temporary folder)")
    return parser.parse_args(argv)


def install_wheelhouse(folder: str, target: str) -> Dict:
    """``benchmarks/gpu_wheelhouse.py install`` in its own process (it installs what this
    interpreter lacks into ``target``), then ``target`` first on ``sys.path``."""
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "gpu_wheelhouse.py"), "install", folder,
         "--target", target],
        capture_output=True, text=True,
    )
    if run.returncode:
        sys.exit(f"installing the wheelhouse {folder} failed:\n{run.stderr.strip()}")
    sys.path.insert(0, target)
    importlib.invalidate_caches()
    return json.loads(run.stdout)


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.path.exists(args.output) and not os.path.isfile(args.output):
        sys.exit(f"--output {args.output} is a folder: name the JSON file to write")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is visible here; on a CPU run "
                 "'--device cpu --smoke' (or '--device cpu' for the paper's sizes, slowly)")
    installed = None
    if args.wheelhouse:
        target = args.install_target or tempfile.mkdtemp(prefix="maskclip-gpu-site-")
        installed = install_wheelhouse(args.wheelhouse, target)
    logging.basicConfig(level=logging.ERROR)  # "RANDOM weights" warnings: known and intended
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch.cuda.amp in AMPTrainer

    sizes = SMOKE if args.smoke else PAPER
    report = Report(args.output, ["benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    device = args.device
    run = {
        "environment": lambda: environment(args, sizes, installed),
        "equality": lambda: equality(device, sizes, report.log),
        "autocast": lambda: autocast_bounds(device, sizes, report.log),
        "sdpa": lambda: sdpa_probe(device, sizes, report.log),
        "encoder_speed": lambda: encoder_speed(device, sizes, report.log),
        "inference_speed": lambda: inference_speed(device, sizes, report.log),
        "stage2_training": lambda: stage2_training(device, sizes, report.log),
        "stage1_training": lambda: stage1_training(device, sizes, report.log),
    }
    for name in SECTIONS:
        if name in args.sections:
            report.run_section(name, run[name])
            if device == "cuda":
                torch.cuda.empty_cache()

    statuses = {n: s["status"] for n, s in report.data["sections"].items()}
    report.data["finished"] = _now()
    report.data["ok"] = all(s == "ok" for s in statuses.values())
    report.log(f"== summary: {statuses}")
    report.data["readme_rows"] = readme_rows(report.data)
    report.log("\n".join(report.data["readme_rows"]))
    report.save()
    return 0 if report.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
