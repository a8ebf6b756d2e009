"""The reusable part of the demo: run MaskCLIP on an image and draw the result with
Detectron2's Visualizer, labels taken from the vocabulary."""
import colorsys
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer

from maskclip_d2.predictor import TASKS, Predictor

__all__ = ["VisualizationDemo", "demo_metadata", "segments_json"]


def demo_metadata(vocabulary: Sequence[str]) -> Metadata:
    """Visualizer metadata for a vocabulary: labels are each class's first synonym, colours
    evenly spaced hues (deterministic)."""
    labels = [name.split(",")[0].strip() for name in vocabulary]
    colors = [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(len(labels), 1), 0.75, 0.95))
        for i in range(len(labels))
    ]
    return Metadata(
        name="maskclip_demo_vocabulary", thing_classes=labels, stuff_classes=labels,
        thing_colors=colors, stuff_colors=colors,
    )


def segments_json(outputs: Dict, task: str, vocabulary: Sequence[str], threshold: float) -> List[Dict]:
    """A JSON-ready list of the segments of one task's output."""
    if task == "panoptic":
        _, segments = outputs["panoptic_seg"]
        return [
            {"id": s["id"], "class": vocabulary[s["category_id"]], "category_id": s["category_id"],
             "isthing": bool(s["isthing"]), "score": round(float(s["score"]), 4), "area": int(s["area"])}
            for s in segments if s["score"] >= threshold
        ]
    if task == "instance":
        inst = outputs["instances"]
        keep = inst.scores >= threshold
        inst = inst[keep]
        return [
            {"class": vocabulary[int(c)], "category_id": int(c), "score": round(float(s), 4),
             "bbox_xyxy": [round(float(v), 1) for v in box], "area": int(m.sum())}
            for c, s, box, m in zip(inst.pred_classes, inst.scores, inst.pred_boxes.tensor, inst.pred_masks)
        ]
    labels = outputs["sem_seg"].argmax(0)
    ids, areas = torch.unique(labels, return_counts=True)
    return [
        {"class": vocabulary[int(i)], "category_id": int(i), "area": int(a)}
        for i, a in zip(ids.tolist(), areas.tolist())
    ]


class VisualizationDemo:
    def __init__(self, predictor: Predictor, confidence_threshold: float = 0.5):
        self.predictor = predictor
        self.confidence_threshold = confidence_threshold

    def run_on_image(self, rgb: np.ndarray, vocabulary: Sequence[str], tasks: Sequence[str]):
        """Returns (outputs, {task: drawn RGB image}, {task: segments})."""
        outputs = self.predictor(rgb, vocabulary=vocabulary, task=list(tasks))
        metadata = demo_metadata(vocabulary)
        drawn, segments = {}, {}
        for task in tasks:
            visualizer = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE)
            if task == "panoptic":
                seg, info = outputs["panoptic_seg"]
                info = [s for s in info if s["score"] >= self.confidence_threshold]
                kept = torch.tensor([s["id"] for s in info], dtype=seg.dtype)
                seg = torch.where(torch.isin(seg.cpu(), kept), seg.cpu(), torch.zeros_like(seg.cpu()))
                vis = visualizer.draw_panoptic_seg(seg, info)
            elif task == "instance":
                inst = outputs["instances"].to("cpu")
                vis = visualizer.draw_instance_predictions(inst[inst.scores >= self.confidence_threshold])
            else:
                vis = visualizer.draw_sem_seg(outputs["sem_seg"].argmax(0).cpu())
            drawn[task] = vis.get_image()
            segments[task] = segments_json(outputs, task, vocabulary, self.confidence_threshold)
        return outputs, drawn, segments
