"""Measuring helpers shared by the benchmark scripts (``benchmarks/``) and the GPU check: the
encoder paths compared, round-robin timing, peak memory, FLOPs and random masks."""
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling.clip.towers import encode_image
from ..modeling.encoder import CLIPBaselineEncoder, MaskCLIPVisualEncoder
from ..modeling.encoder.dense_reference import dense_reference_forward
from .flops import count_flops

__all__ = ["PATHS", "count_gflops", "encoder_paths", "peak_mb", "random_masks", "time_round_robin"]

# The encoder paths the benchmarks compare: plain CLIP (the unit of cost), mask class tokens
# without RMA, the paper's RMA encoder, the CLIP Baseline and the dense Eq. 3-5 reference.
PATHS = ("plain", "mask_tokens", "rma", "baseline", "dense_reference")


class _Path(nn.Module):
    """A forward with tensor outputs only, for fvcore's tracer; ``owner`` holds the weights."""

    def __init__(self, fn, owner):
        super().__init__()
        self.fn = fn
        self.owner = owner

    def forward(self, images, masks):
        out = self.fn(images, masks)
        if isinstance(out, dict):
            return (out["features"], *out["masks"])
        return out


def count_gflops(fn, owner, images, masks):
    return count_flops(_Path(fn, owner), (images, masks))["flops"] / 1e9


def peak_mb(fn, images, masks, device):
    """Peak memory allocated during one forward, beyond what was allocated before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(images, masks)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(images, masks)
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    totals = [
        e["args"]["Total Allocated"]
        for e in events
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    ]
    return max(totals, default=0) / 2**20  # counted from 0 at the start of the profile


def random_masks(batch, num_masks, size, generator):
    """Smooth random blobs, like upsampled proposal logits (about half of each is inside);
    ``size`` is the (H, W) of CLIP's input."""
    low = torch.randn(batch, num_masks, 8, 8, generator=generator) * 4
    return F.interpolate(low, size=size, mode="bilinear", align_corners=False)


def encoder_paths(visual, refine_chunk_size, device):
    """The paths of ``PATHS`` over one CLIP image tower: {path: fn(images, masks)} and the
    module holding each path's weights (for fvcore)."""
    mask_tokens = MaskCLIPVisualEncoder(visual, mode="mask_tokens").to(device).eval()
    rma = MaskCLIPVisualEncoder(
        visual, mode="rma", refine_chunk_size=refine_chunk_size
    ).to(device).eval()
    baseline = CLIPBaselineEncoder(visual).to(device).eval()
    fns = {
        "plain": lambda im, m: encode_image(visual, im),
        "mask_tokens": mask_tokens,
        "rma": rma,
        "baseline": baseline,
        "dense_reference": lambda im, m: dense_reference_forward(rma, im, m),
    }
    owners = {"plain": visual, "mask_tokens": mask_tokens, "rma": rma, "baseline": baseline,
              "dense_reference": rma}
    return fns, owners


def time_round_robin(fns, inputs, repeats, device, scale=None):
    """{path: [seconds of each of ``repeats`` forwards]}, after one warm-up forward each,
    taken round-robin over the paths; a path's times are multiplied by ``scale[path]``."""
    scale = scale or {}

    def timed(path):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fns[path](*inputs[path])
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * scale.get(path, 1.0)

    for path in fns:  # warm-up
        timed(path)
    times = {path: [] for path in fns}
    for _ in range(repeats):
        for path in fns:
            times[path].append(timed(path))
    return times
