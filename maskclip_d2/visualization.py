"""The reusable part of the demo: run MaskCLIP on an image and draw the result with
Detectron2's Visualizer, labels taken from the vocabulary.

Pictures one can judge: each class has one colour (its position in the vocabulary picks it:
the same on every image, distinct within the first ``len(DISTINCT_COLORS)`` classes), a
legend below the picture names the classes drawn, labels are kept inside the image, small
inputs are drawn enlarged (nearest neighbour, whole factors) and the input can be shown
beside the result.
"""
import colorsys
from typing import Dict, List, Optional, Sequence

import matplotlib.colors as mplc
import numpy as np
import torch
from detectron2.data import Metadata
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image, ImageDraw, ImageFont

from maskclip_d2.predictor import TASKS, Predictor

__all__ = [
    "draw_outputs",
    "VisualizationDemo", "demo_metadata", "kept_results", "segments_json", "class_colors",
    "enlarged", "draw_legend", "DISTINCT_COLORS", "DRAW_MIN_SIZE",
]

# Kelly's 22 colours of maximum contrast without white and black, ordered so that each is the
# farthest from those before it (any first 14 differ by at least 100 in summed |RGB|): classes
# 0..19 of a vocabulary get one each, further classes golden-ratio-spaced hues.
DISTINCT_COLORS = [
    (255, 179, 0), (0, 83, 138), (166, 189, 215), (127, 24, 13), (246, 118, 142), (129, 112, 102),
    (241, 58, 19), (179, 40, 81), (206, 162, 98), (0, 125, 52), (83, 55, 122), (35, 44, 22),
    (147, 170, 0), (193, 0, 32), (255, 104, 0), (255, 122, 92), (89, 51, 21), (128, 62, 117),
    (255, 142, 0), (244, 200, 0),
]
# Inputs whose longest side is shorter are drawn enlarged by a whole factor up to this size
# (a 64 px scene at 8x), so that labels and edges are readable.
DRAW_MIN_SIZE = 512
# Detectron2's label size grows with the image (sqrt(H * W) / 90): at least this on small ones.
LABEL_MIN_FONT_SIZE = 13


def class_colors(num_classes: int) -> List[tuple]:
    """RGB colour of each class index: ``DISTINCT_COLORS``, then golden-ratio hues."""
    colors = list(DISTINCT_COLORS[:num_classes])
    for i in range(len(colors), num_classes):
        hue = (i * 0.618033988749895) % 1.0
        value = 0.95 if i % 2 else 0.7
        colors.append(tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, value)))
    return colors


def demo_metadata(vocabulary: Sequence[str]) -> Metadata:
    """Visualizer metadata for a vocabulary: labels are each class's first synonym, colours
    ``class_colors`` (one per class, the same on every image)."""
    labels = [name.split(",")[0].strip() for name in vocabulary]
    colors = class_colors(len(labels))
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


def enlarged(task: str, result, factor: int):
    """One task's ``kept_results`` entry drawn ``factor`` times larger (nearest neighbour)."""
    if factor == 1:
        return result
    if task == "panoptic":
        seg, info = result  # copies: the Visualizer writes its own areas into them
        return seg.repeat_interleave(factor, 0).repeat_interleave(factor, 1), [dict(s) for s in info]
    if task == "semantic":
        return result.repeat_interleave(factor, 0).repeat_interleave(factor, 1)
    height, width = result.image_size
    big = Instances((height * factor, width * factor))
    big.pred_masks = result.pred_masks.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    big.pred_boxes = result.pred_boxes.clone()
    big.pred_boxes.scale(factor, factor)
    big.scores, big.pred_classes = result.scores, result.pred_classes
    return big


class _ClassColorVisualizer(Visualizer):
    """Detectron2's Visualizer with one colour per class (no per-segment jitter; instances
    take their class's colour too) and every label moved inside the image."""

    def __init__(self, rgb, metadata):
        super().__init__(rgb, metadata, instance_mode=ColorMode.SEGMENTATION)
        self._default_font_size = max(self._default_font_size, LABEL_MIN_FONT_SIZE)

    def _jitter(self, color):
        return color

    def draw_text(self, text, position, *, color="g", **kwargs):
        # the label in its class's colour mixed with white: readable on its black box for dark
        # class colours too
        color = 0.5 + 0.5 * np.asarray(mplc.to_rgb(color))
        output = super().draw_text(text, position, color=color, **kwargs)
        label = self.output.ax.texts[-1]
        box = label.get_window_extent(self.output.canvas.get_renderer())
        (x0, y0), (x1, y1) = self.output.ax.transData.inverted().transform(box.get_points())
        (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
        pad = 0.02 * min(self.output.width, self.output.height)  # the label's black box
        dx = max(0.0, pad - x0) or -max(0.0, x1 + pad - self.output.width)
        dy = max(0.0, pad - y0) or -max(0.0, y1 + pad - self.output.height)
        x, y = label.get_position()
        label.set_position((x + dx, y + dy))
        return output


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1, or no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_legend(picture: np.ndarray, classes: Sequence[int], labels: Sequence[str],
                colors: Sequence[tuple]) -> np.ndarray:
    """``picture`` with a legend below it: a colour swatch and the label of each class in
    ``classes`` (vocabulary order), in rows as wide as the picture."""
    width = picture.shape[1]
    size = max(12, min(20, width // 40))
    font, gap = _font(size), size // 2
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows, x = [[]], gap
    for c in classes:
        text_width = scratch.textlength(labels[c], font=font)
        item = size + gap // 2 + int(text_width) + 2 * gap
        if rows[-1] and x + item > width:
            rows.append([])
            x = gap
        rows[-1].append((x, c))
        x += item
    line = size + gap
    legend = Image.new("RGB", (width, gap + line * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for r, row in enumerate(rows):
        y = gap + r * line
        for x, c in row:
            draw.rectangle([x, y, x + size, y + size], fill=tuple(colors[c]), outline=(0, 0, 0))
            draw.text((x + size + gap // 2, y + size // 2), labels[c], fill=(0, 0, 0), font=font, anchor="lm")
    return np.concatenate([picture, np.asarray(legend)], axis=0)


def _classes_drawn(task: str, result) -> List[int]:
    if task == "panoptic":
        return sorted({s["category_id"] for s in result[1]})
    if task == "instance":
        return sorted(set(result.pred_classes.tolist()))
    return sorted(torch.unique(result).tolist())


def draw_outputs(rgb: np.ndarray, outputs: Dict, vocabulary: Sequence[str], tasks: Sequence[str],
                 threshold: float, side_by_side: bool = False, draw_min_size: int = DRAW_MIN_SIZE):
    """({task: drawn RGB image}, {task: segments}) of a Predictor's outputs on ``rgb``, segments
    below ``threshold`` left out (``kept_results``). Segments (areas, boxes) are at the input's
    resolution; inputs whose longest side is under ``draw_min_size`` are drawn enlarged by a
    whole factor (nearest neighbour), with a legend; ``side_by_side`` draws the input left of
    the result. The same outputs always give the same pictures (NumPy's global random state,
    which the Visualizer may draw from, is seeded and restored)."""
    metadata = demo_metadata(vocabulary)
    kept = kept_results(outputs, tasks, threshold)
    factor = max(1, draw_min_size // max(rgb.shape[:2]))
    big = rgb.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else rgb
    drawn, segments = {}, {}
    random_state = np.random.get_state()
    try:
        np.random.seed(0)
        for task in tasks:
            visualizer = _ClassColorVisualizer(big, metadata)
            result = enlarged(task, kept[task], factor)
            if task == "panoptic":
                vis = visualizer.draw_panoptic_seg(*result)
            elif task == "instance":
                vis = visualizer.draw_instance_predictions(result)
            else:
                vis = visualizer.draw_sem_seg(result)
            picture = vis.get_image()
            if side_by_side:
                picture = np.concatenate([big, np.full((big.shape[0], 8, 3), 255, np.uint8), picture], axis=1)
            drawn[task] = draw_legend(picture, _classes_drawn(task, kept[task]),
                                      metadata.stuff_classes, metadata.stuff_colors)
            segments[task] = segments_json(task, kept[task], vocabulary)
    finally:
        np.random.set_state(random_state)
    return drawn, segments


class VisualizationDemo:
    def __init__(self, predictor: Predictor, confidence_threshold: float = 0.5,
                 side_by_side: bool = False, draw_min_size: int = DRAW_MIN_SIZE):
        """
        Args:
            side_by_side: draw the input left of the result (same size).
            draw_min_size: inputs whose longest side is shorter are drawn enlarged by a
                whole factor (nearest neighbour) up to this size.
        """
        self.predictor = predictor
        self.confidence_threshold = confidence_threshold
        self.side_by_side = side_by_side
        self.draw_min_size = draw_min_size

    def run_on_image(self, rgb: np.ndarray, vocabulary: Sequence[str], tasks: Sequence[str],
                     is_thing: Optional[Sequence[bool]] = None):
        """Returns (outputs, {task: drawn RGB image}, {task: segments}); ``is_thing``: per
        class, thing or stuff (None: all things). See ``draw_outputs``."""
        outputs = self.predictor(rgb, vocabulary=vocabulary, task=list(tasks), is_thing=is_thing)
        drawn, segments = draw_outputs(rgb, outputs, vocabulary, tasks, self.confidence_threshold,
                                       self.side_by_side, self.draw_min_size)
        return outputs, drawn, segments

    def classify_masks(self, rgb: np.ndarray, masks, vocabulary: Sequence[str],
                       is_thing: Optional[Sequence[bool]] = None):
        """Masks of your own named (``Predictor.classify_masks``): returns (Instances, drawn RGB
        image, segments), every mask drawn with its best class and score, none dropped."""
        result = self.predictor.classify_masks(rgb, masks, vocabulary=vocabulary, is_thing=is_thing)
        drawn, segments = draw_outputs(rgb, {"instances": result}, vocabulary, ["instance"], float("-inf"),
                                       self.side_by_side, self.draw_min_size)
        segments = segments["instance"]
        for segment, mask_id, scores in zip(segments, result.mask_ids.tolist(), result.class_scores.tolist()):
            segment.update(mask_id=mask_id, no_object_score=round(scores[-1], 4))
        return result, drawn["instance"], segments
