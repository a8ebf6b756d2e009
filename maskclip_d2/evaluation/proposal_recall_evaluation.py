"""Recall of class-agnostic mask proposals (MaskCLIP's stage 1) against panoptic segments."""
import itertools
from collections import OrderedDict

import numpy as np
import torch
from detectron2.data import DatasetCatalog, detection_utils
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from panopticapi.utils import rgb2id

__all__ = ["ProposalRecallEvaluator"]


class ProposalRecallEvaluator(DatasetEvaluator):
    """Mask recall of a class-agnostic proposal network on a panoptic dataset.

    For every annotated, non-crowd segment of the ground truth (things and stuff: the proposal
    network's objects), the best IoU among the image's proposals, each binarised at
    ``sigmoid(logit) >= 0.5``. Reports ``recall@<t>`` (% of segments whose best IoU >= t, for
    each threshold t), ``mean_best_IoU`` (%) and the number of segments. Segments of void
    regions (e.g. classes a split leaves unannotated) are not counted.

    Model outputs: ``{"proposals": {"mask_logits": (Q, H, W), "objectness": (Q,)}}`` at the
    ground truth's resolution (``ClassAgnosticMask2Former`` in inference).
    """

    def __init__(self, dataset_name, iou_thresholds=(0.5,), top_k=None):
        """
        Args:
            iou_thresholds: the IoUs at which recall is reported.
            top_k: keep only the k proposals of highest objectness (None: all).
        """
        self._dataset_name = dataset_name
        self._iou_thresholds = tuple(iou_thresholds)
        self._top_k = top_k
        self._records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}
        self._best_ious = []

    def reset(self):
        self._best_ious = []

    def process(self, inputs, outputs):
        for x, output in zip(inputs, outputs):
            record = self._records[x["file_name"]]
            pan = rgb2id(detection_utils.read_image(record["pan_seg_file_name"], "RGB"))
            segments = [s for s in record["segments_info"] if not s.get("iscrowd", 0)]
            if not segments:
                continue
            gt = torch.from_numpy(np.stack([pan == s["id"] for s in segments])).flatten(1).float()
            proposals = output["proposals"]
            logits = proposals["mask_logits"].to("cpu")
            if self._top_k is not None:
                top = proposals["objectness"].to("cpu").topk(min(self._top_k, len(logits))).indices
                logits = logits[top]
            if logits.shape[-2:] != pan.shape:
                raise ValueError(
                    f"proposals of {x['file_name']} are {tuple(logits.shape[-2:])}, its panoptic "
                    f"ground truth {pan.shape}: the evaluator needs them at the same resolution"
                )
            pred = (logits >= 0).flatten(1).float()
            intersection = gt @ pred.T
            union = gt.sum(1, keepdim=True) + pred.sum(1)[None] - intersection
            iou = intersection / union.clamp(min=1)
            self._best_ious.extend(iou.max(dim=1).values.tolist() if len(pred) else [0.0] * len(gt))

    def evaluate(self):
        best = comm.gather(self._best_ious, dst=0)
        if not comm.is_main_process():
            return None
        best = np.array(list(itertools.chain(*best)), dtype=np.float64)
        if len(best) == 0:
            return OrderedDict(proposals={"num_segments": 0})
        result = {f"recall@{t:g}": 100.0 * float((best >= t).mean()) for t in self._iou_thresholds}
        result["mean_best_IoU"] = 100.0 * float(best.mean())
        result["num_segments"] = int(len(best))
        return OrderedDict(proposals=result)
