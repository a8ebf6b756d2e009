"""Does an exported model compute what the PyTorch model computes? The self-check of
``tools/export_onnx.py`` (and of ``benchmarks/benchmark_model.py``'s ONNX Runtime rows).

ONNX Runtime and PyTorch sum in different orders, so a correct float32 export differs by
rounding only, and rounding grows with an output's magnitude and the depth of the network
(ViT-L/14@336px: 24 layers of 1024 channels). So each output is compared relative to its
scale: ``max |PyTorch - ONNX Runtime| / max(max |PyTorch|, 1)`` must stay within
``RELATIVE_TOLERANCES`` (a wrong operator gives differences of the order of the output
itself). The post-processed segments are compared too and reported as the share of pixels
whose segment agrees: near-ties between overlapping masks may flip a few pixels, which is no
error.
"""
from typing import Dict

import torch

__all__ = ["RELATIVE_TOLERANCES", "compare_outputs", "compare_segments", "format_report"]

# Largest difference allowed, as a fraction of the output's largest magnitude (at least 1).
RELATIVE_TOLERANCES = {"class_logits": 1e-3, "mask_logits": 1e-3, "objectness": 1e-3}


def compare_outputs(ours: Dict[str, torch.Tensor], theirs: Dict[str, torch.Tensor],
                    tolerances: Dict[str, float] = RELATIVE_TOLERANCES) -> Dict[str, Dict]:
    """Per output of ``tolerances``: {"max_abs", "scale", "relative", "tolerance", "within"}
    for ``ours`` (the reference, e.g. PyTorch float32) against ``theirs``."""
    report = {}
    for key, tolerance in tolerances.items():
        a, b = ours[key].detach().float().cpu(), theirs[key].detach().float().cpu()
        if a.shape != b.shape:
            raise ValueError(f"{key}: shapes differ, {tuple(a.shape)} against {tuple(b.shape)}")
        max_abs = float((a - b).abs().max()) if a.numel() else 0.0
        scale = max(float(a.abs().max()) if a.numel() else 0.0, 1.0)
        report[key] = {
            "max_abs": max_abs, "scale": scale, "relative": max_abs / scale,
            "tolerance": tolerance, "within": max_abs / scale <= tolerance,
        }
        if key == "class_logits" and a.numel():  # which class (or no-object) each mask gets
            report[key]["argmax_agree"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
            report[key]["masks"] = int(a.shape[:-1].numel())
    return report


def compare_segments(ours: Dict, theirs: Dict) -> Dict[str, float]:
    """Detectron2 outputs of one image: the share of pixels whose panoptic segment (mapped to
    its class) and whose semantic class agree, and the segment counts."""
    report = {}
    if "panoptic_seg" in ours and "panoptic_seg" in theirs:
        (ids_a, segments_a), (ids_b, segments_b) = ours["panoptic_seg"], theirs["panoptic_seg"]
        report["segments"] = len(segments_a)
        report["other_segments"] = len(segments_b)
        report["panoptic_pixels_agree"] = float((_classes(ids_a, segments_a) == _classes(ids_b, segments_b))
                                                .float().mean())
    if "sem_seg" in ours and "sem_seg" in theirs:
        report["semantic_pixels_agree"] = float(
            (ours["sem_seg"].argmax(0).cpu() == theirs["sem_seg"].argmax(0).cpu()).float().mean()
        )
    return report


def _classes(ids: torch.Tensor, segments) -> torch.Tensor:
    """A panoptic id map as a map of (class + 1), 0 for no segment: segment ids themselves are
    arbitrary numbers, so two maps compare by what their segments are."""
    lookup = torch.zeros(int(ids.max()) + 1 if ids.numel() else 1, dtype=torch.long)
    for segment in segments:
        lookup[segment["id"]] = segment["category_id"] + 1
    return lookup[ids.long().cpu()]


def format_report(outputs: Dict[str, Dict], segments: Dict[str, float], names=("PyTorch", "ONNX Runtime")) -> str:
    a, b = names
    lines = []
    for key, r in outputs.items():
        lines.append(
            f"  {key}: max |{a} - {b}| = {r['max_abs']:.1e}, {r['relative']:.1e} of its scale "
            f"{r['scale']:.3g} (tolerance {r['tolerance']:.0e}): {'ok' if r['within'] else 'TOO LARGE'}"
            + (f"; class argmax equal for {100 * r['argmax_agree']:.1f}% of {r['masks']} masks"
               if "argmax_agree" in r else "")
        )
    if "panoptic_pixels_agree" in segments:
        lines.append(
            f"  panoptic: {segments['segments']} segments ({a}), {segments['other_segments']} ({b}); "
            f"{100 * segments['panoptic_pixels_agree']:.2f}% of pixels in a segment of the same class"
        )
    if "semantic_pixels_agree" in segments:
        lines.append(f"  semantic: {100 * segments['semantic_pixels_agree']:.2f}% of pixels of the same class")
    return "\n".join(lines)
