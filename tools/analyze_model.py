#!/usr/bin/env python
"""Parameters and FLOPs of MaskCLIP per stage, against the CLIP Baseline (paper, Table 6).

    python tools/analyze_model.py                   # Table 6: ViT-L/14, 640 x 640, 100 masks
    python tools/analyze_model.py --config-file configs/coco/maskclip_vitb16.yaml \
        --image-size 512 --num-masks 50 --opts MODEL.CLIP.NAME ViT-B/16

Stages: the proposal network (class-agnostic Mask2Former on the image), the CLIP stage (the
MaskCLIP Visual Encoder, its training-free "mask_tokens" variant, or the CLIP Baseline's one
CLIP forward per masked image) and the text tower (once per vocabulary, then cached; not part
of Table 6). FLOPs are fvcore's: one fused multiply-add counts as one FLOP, as in the tables of
Detectron2 and the paper. The weights are random (FLOPs and parameter counts do not depend on
them), so nothing is loaded and nothing is downloaded.

fvcore has no rule for ``scaled_dot_product_attention``, which the CLIP stages use for all
their attention; this tool adds one (Q K^T and A V: B * H * Lq * Lk * (D + Dv)) so attention
is not silently dropped, and it prints any operator fvcore still skipped.
"""
import argparse
import logging
import os
import sys
from collections import Counter
from typing import Dict, List, Sequence

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.modeling import build_model  # noqa: E402

from maskclip_d2.config import get_maskclip_cfg, shapes_only  # noqa: E402
from maskclip_d2.utils.flops import count_flops, sdpa_flop_jit  # noqa: E402,F401 (re-exported)
from maskclip_d2.modeling.encoder.clip_baseline import CLIPBaselineEncoder  # noqa: E402
from maskclip_d2.modeling.encoder.maskclip_encoder import MaskCLIPVisualEncoder  # noqa: E402

__all__ = ["sdpa_flop_jit", "count_flops", "setup_cfg", "analyze", "format_table", "main"]

DEFAULT_CONFIG = "configs/coco/maskclip_vitl14_336.yaml"
# Table 6: "CLIP ViT-L/14 in all methods ... 640x640 as the input resolution", 100 masks.
TABLE6_OPTS = ["MODEL.CLIP.NAME", "ViT-L/14"]
METHODS = ("baseline", "mask_tokens", "rma")
METHOD_NAMES = {"baseline": "CLIP Baseline", "mask_tokens": "MaskCLIP w/o RMA", "rma": "MaskCLIP"}


class _Call(nn.Module):
    """A bound method as a module, for fvcore's tracer."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def parameter_counts(modules: Sequence[nn.Module]) -> Dict[str, int]:
    """Total, trainable and frozen parameters of some modules, each tensor counted once."""
    params = {id(p): p for m in modules for p in m.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def setup_cfg(config_file: str, opts: Sequence[str]):
    # Shapes are all that matter: random weights, nothing loaded, on the CPU; the text stage
    # is measured on ``num_classes`` prompts of its own.
    cfg = shapes_only(get_maskclip_cfg(config_file, opts))
    cfg.freeze()
    return cfg


def analyze(
    cfg,
    image_size: int = 640,
    num_masks: int = 100,
    num_classes: int = 150,
    methods: Sequence[str] = METHODS,
    stages: Sequence[str] = ("proposals", "clip", "text"),
) -> Dict[str, Dict[str, Dict]]:
    """Per method and stage: {"flops", "skipped", "params"}; plus "total" per method.

    Args:
        cfg: a MaskCLIP config (see ``setup_cfg``); its MODE is ignored, every method in
            ``methods`` shares its CLIP and proposal network.
        image_size: side of the square input image (the proposal network's input).
        num_masks: masks given to the CLIP stage (M).
        num_classes: vocabulary size for the text stage (one prompt per class).
        methods: any of "baseline", "mask_tokens", "rma".
        stages: any of "proposals", "clip", "text".
    """
    torch.manual_seed(0)
    logging.getLogger("maskclip_d2").setLevel(logging.ERROR)  # the random-weights warnings
    model = build_model(cfg).eval()
    visual = model.encoder.visual
    H, W = model.encoder.input_size
    mc = cfg.MODEL.MASKCLIP
    encoders = {
        "baseline": lambda: CLIPBaselineEncoder(visual, mask_threshold=mc.MASK_THRESHOLD),
        "mask_tokens": lambda: MaskCLIPVisualEncoder(
            visual, mode="mask_tokens", mask_threshold=mc.MASK_THRESHOLD,
        ),
        "rma": lambda: MaskCLIPVisualEncoder(
            visual, mode="rma", rma_layers=list(mc.RMA_LAYERS) or None,
            mask_threshold=mc.MASK_THRESHOLD, refine_chunk_size=mc.REFINE_CHUNK_SIZE,
        ),
    }
    shared = {}
    if "proposals" in stages:
        network = model.proposal_network.network
        images = torch.randn(1, 3, image_size, image_size)
        shared["proposals"] = {
            **count_flops(_Call(network, "propose"), (images,)),
            "params": parameter_counts([model.proposal_network]),
        }
    if "text" in stages:
        # prompts of the full context length: the tower's cost does not depend on the words
        text_encoder = model.text_encoder  # the CLIP's own tokenizer (OpenAI's or OpenCLIP's)
        tokens = text_encoder.tokenizer(["a"] * num_classes, context_length=text_encoder.context_length)
        shared["text"] = {
            **count_flops(_Call(model.text_encoder, "encode_tokens"), (tokens,)),
            "params": parameter_counts([model.text_encoder]),
        }

    results = {}
    clip_images = torch.randn(1, 3, H, W)
    mask_logits = torch.randn(1, num_masks, H, W)
    for method in methods:
        per_stage = dict(shared)
        if "clip" in stages:
            encoder = encoders[method]().eval()
            per_stage["clip"] = {
                **count_flops(encoder, (clip_images, mask_logits)),
                "params": parameter_counts([encoder]),
            }
        per_stage = {s: per_stage[s] for s in ("proposals", "clip", "text") if s in per_stage}
        order = list(per_stage)
        image_stages = [s for s in order if s != "text"]
        per_stage["total"] = {
            "flops": sum(per_stage[s]["flops"] for s in image_stages),
            "skipped": sum((per_stage[s]["skipped"] for s in order), Counter()),
            "params": {
                k: sum(per_stage[s]["params"][k] for s in order)
                for k in ("total", "trainable", "frozen")
            },
        }
        results[method] = per_stage
    return results


def _flops(n: float) -> str:
    return f"{n / 1e12:.3f} T" if n >= 1e11 else f"{n / 1e9:.2f} G"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f} M"


def format_table(results: Dict, image_size: int, num_masks: int, num_classes: int, clip_name: str) -> str:
    rows = [
        f"FLOPs (fvcore, 1 multiply-add = 1 FLOP) and parameters: CLIP {clip_name}, "
        f"{image_size} x {image_size} image, {num_masks} masks, text for {num_classes} classes",
        "",
        f"{'method':<18}{'stage':<11}{'FLOPs':>12}{'params':>11}{'trainable':>11}{'frozen':>11}",
    ]
    for method, stages in results.items():
        for stage, r in stages.items():
            label = METHOD_NAMES[method] if stage == next(iter(stages)) else ""
            name = "total*" if stage == "total" else stage
            p = r["params"]
            rows.append(
                f"{label:<18}{name:<11}{_flops(r['flops']):>12}{_count(p['total']):>11}"
                f"{_count(p['trainable']):>11}{_count(p['frozen']):>11}"
            )
    rows.append("* FLOPs total = proposals + clip (per image, as in Table 6); the text tower runs "
                "once per vocabulary and is cached.")
    if "baseline" in results:
        base = results["baseline"]["total"]["flops"]
        for method in results:
            if method != "baseline":
                ratio = base / max(results[method]["total"]["flops"], 1)
                rows.append(f"CLIP Baseline / {METHOD_NAMES[method]}: {ratio:.1f}x the FLOPs")
    # Each stage once: the shared stages are the same modules for every method.
    first = next(iter(results.values()))
    skipped = sum((r["skipped"] for s, r in first.items() if s not in ("clip", "total")), Counter())
    skipped += sum((r["clip"]["skipped"] for r in results.values() if "clip" in r), Counter())
    if skipped:
        ops = ", ".join(f"{op} ({n})" for op, n in sorted(skipped.items()))
        rows.append(f"not counted by fvcore (element-wise and other cheap ops): {ops}")
    return "\n".join(rows)


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument("--image-size", type=int, default=640, help="square input image side")
    parser.add_argument("--num-masks", type=int, default=100)
    parser.add_argument("--num-classes", type=int, default=150, help="vocabulary size for the text stage")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS))
    parser.add_argument(
        "--no-table6", action="store_true",
        help="keep the config's CLIP; by default CLIP is ViT-L/14 (224 px) as in Table 6",
    )
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides KEY VALUE")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        print(f"error: unknown --methods {args.methods!r}: choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    opts = ([] if args.no_table6 else TABLE6_OPTS) + list(args.opts)
    cfg = setup_cfg(args.config_file, opts)
    results = analyze(cfg, args.image_size, args.num_masks, args.num_classes, methods)
    print(format_table(results, args.image_size, args.num_masks, args.num_classes, cfg.MODEL.CLIP.NAME))
    return 0


if __name__ == "__main__":
    sys.exit(main())
