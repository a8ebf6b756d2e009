"""Model outputs in Detectron2's formats, built from ground truth, and one evaluation pass:
what the evaluator tests feed Detectron2's evaluators."""
import numpy as np
import torch
from detectron2.structures import Boxes, Instances
from panopticapi.utils import rgb2id
from PIL import Image


def evaluate(evaluator, inputs, outputs):
    evaluator.reset()
    for x, y in zip(inputs, outputs):
        evaluator.process([x], [y])
    return evaluator.evaluate()


def instances_from_masks(masks, classes, scores):
    """Instances as a model returns them: boolean masks (N, H, W), boxes, classes, scores."""
    masks = torch.as_tensor(np.stack(masks))
    inst = Instances(masks.shape[1:])
    inst.pred_masks = masks
    ys_xs = [np.nonzero(m) for m in masks.numpy()]
    inst.pred_boxes = Boxes(torch.tensor(
        [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] for ys, xs in ys_xs], dtype=torch.float32))
    inst.pred_classes = torch.as_tensor(classes)
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    return {"instances": inst}


def panoptic_outputs(records, drop_segment=None):
    outputs = []
    for r in records:
        pan = rgb2id(np.asarray(Image.open(r["pan_seg_file_name"])).astype(np.uint32))
        segments = [dict(id=s["id"], category_id=s["category_id"], isthing=s["isthing"])
                    for s in r["segments_info"]]
        if drop_segment is not None and r["image_id"] == drop_segment[0]:
            pan[pan == drop_segment[1]] = 0
            segments = [s for s in segments if s["id"] != drop_segment[1]]
        outputs.append({"panoptic_seg": (torch.as_tensor(pan.astype(np.int64)), segments)})
    return outputs


def as_scores(label, num_classes=150):
    """(C, H, W) scores whose argmax is ``label`` (void pixels get class 0; not scored)."""
    scores = torch.zeros(num_classes, *label.shape)
    scores.scatter_(0, torch.as_tensor(np.where(label == 255, 0, label))[None], 1.0)
    return {"sem_seg": scores}
