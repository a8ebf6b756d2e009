"""The reusable part of the demo: run MaskCLIP on an image and draw the result with
Detectron2's Visualizer, labels taken from the vocabulary."""
import colorsys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.utils.visualizer import ColorMode, Visualizer

from maskclip_d2.predictor import TASKS, Predictor

__all__ = ["VisualizationDemo", "demo_metadata", "kept_results", "segments_json"]


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


def segments_json(task: str, result, vocabulary: Sequence[str]) -> List[Dict]:
    """A JSON-ready list of the segments of one task's result, as ``kept_results`` gives it."""
    if task == "panoptic":
        _, segments = result
        return [
            {"id": s["id"], "class": vocabulary[s["category_id"]], "category_id": s["category_id"],
             "isthing": bool(s["isthing"]), "score": round(float(s["score"]), 4), "area": int(s["area"])}
            for s in segments
        ]
    if task == "instance":
        classes, scores = result.pred_classes.tolist(), result.scores.tolist()
        boxes, areas = result.pred_boxes.tensor.tolist(), result.pred_masks.flatten(1).sum(1).tolist()
        return [
            {"class": vocabulary[c], "category_id": c, "score": round(s, 4),
             "bbox_xyxy": [round(v, 1) for v in box], "area": a}
            for c, s, box, a in zip(classes, scores, boxes, areas)
        ]
    ids, areas = torch.unique(result, return_counts=True)
    return [
        {"class": vocabulary[i], "category_id": i, "area": a}
        for i, a in zip(ids.tolist(), areas.tolist())
    ]


def kept_results(outputs: Dict, tasks: Sequence[str], threshold: float) -> Dict:
    """Each task's result on the CPU, below-threshold segments dropped: panoptic (segment ids,
    segments_info), instance ``Instances``, semantic (H, W) class labels."""
    kept = {}
    if "panoptic" in tasks:
        seg, info = outputs["panoptic_seg"]
        seg = seg.cpu()
        info = [s for s in info if s["score"] >= threshold]
        ids = torch.tensor([s["id"] for s in info], dtype=seg.dtype)
        kept["panoptic"] = (torch.where(torch.isin(seg, ids), seg, torch.zeros_like(seg)), info)
    if "instance" in tasks:
        inst = outputs["instances"].to("cpu")
        kept["instance"] = inst[inst.scores >= threshold]
    if "semantic" in tasks:
        kept["semantic"] = outputs["sem_seg"].argmax(0).cpu()
    return kept


class VisualizationDemo:
    def __init__(self, predictor: Predictor, confidence_threshold: float = 0.5):
        self.predictor = predictor
        self.confidence_threshold = confidence_threshold

    def run_on_image(self, rgb: np.ndarray, vocabulary: Sequence[str], tasks: Sequence[str],
                     is_thing: Optional[Sequence[bool]] = None):
        """Returns (outputs, {task: drawn RGB image}, {task: segments}); ``is_thing``: per
        class, thing or stuff (None: all things)."""
        outputs = self.predictor(rgb, vocabulary=vocabulary, task=list(tasks), is_thing=is_thing)
        metadata = demo_metadata(vocabulary)
        kept = kept_results(outputs, tasks, self.confidence_threshold)
        drawn, segments = {}, {}
        for task in tasks:
            visualizer = Visualizer(rgb, metadata, instance_mode=ColorMode.IMAGE)
            if task == "panoptic":
                vis = visualizer.draw_panoptic_seg(*kept[task])
            elif task == "instance":
                vis = visualizer.draw_instance_predictions(kept[task])
            else:
                vis = visualizer.draw_sem_seg(kept[task])
            drawn[task] = vis.get_image()
            segments[task] = segments_json(task, kept[task], vocabulary)
        return outputs, drawn, segments

    def classify_masks(self, rgb: np.ndarray, masks, vocabulary: Sequence[str],
                       is_thing: Optional[Sequence[bool]] = None):
        """Masks of your own named (``Predictor.classify_masks``): returns (Instances, drawn RGB
        image, segments), every mask drawn with its best class and score, none dropped."""
        result = self.predictor.classify_masks(rgb, masks, vocabulary=vocabulary, is_thing=is_thing)
        drawn = Visualizer(rgb, demo_metadata(vocabulary), instance_mode=ColorMode.IMAGE)
        segments = segments_json("instance", result, vocabulary)
        for segment, mask_id, scores in zip(segments, result.mask_ids.tolist(), result.class_scores.tolist()):
            segment.update(mask_id=mask_id, no_object_score=round(scores[-1], 4))
        return result, drawn.draw_instance_predictions(result).get_image(), segments
