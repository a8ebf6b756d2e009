"""ProposalRecallEvaluator: recall@0.5 and mean best IoU of class-agnostic proposals, on a
registered panoptic dataset (real PNG + JSON)."""
import numpy as np
import pytest
import torch

from maskclip_d2.data.datasets.register_synthetic_world import register_all_synthetic_world
from maskclip_d2.evaluation import ProposalRecallEvaluator, build_evaluator
from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.synthetic_world.world import write_world
from helpers.tiny_datasets import isolated_catalogs  # noqa: F401  (autouse fixture)
from detectron2.data import DatasetCatalog
from panopticapi.utils import rgb2id
from PIL import Image


def test_recall_counts_segments_whose_best_proposal_reaches_the_iou(tmp_path):
    write_world(str(tmp_path), num_train=1, num_val=2, seed=0)
    register_all_synthetic_world(str(tmp_path))
    name = "synthetic_world_val_all"
    cfg = get_maskclip_cfg()
    cfg.MODEL.META_ARCHITECTURE = "ClassAgnosticMask2Former"
    assert isinstance(build_evaluator(cfg, name), ProposalRecallEvaluator)

    evaluator = ProposalRecallEvaluator(name, iou_thresholds=(0.5, 0.9))
    evaluator.reset()
    expected = []
    for record in DatasetCatalog.get(name):
        pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
        masks = [torch.from_numpy(pan == s["id"]) for s in record["segments_info"]]
        # proposal 0 is exactly segment 0; proposal 1 is segment 1 with 30% of its pixels
        # (IoU 0.3) ... the rest of the segments get nothing
        proposals = [masks[0].clone()]
        half = masks[1].clone()
        ys, xs = torch.nonzero(half, as_tuple=True)
        keep = int(0.3 * len(ys))
        half[ys[keep:], xs[keep:]] = False
        proposals.append(half)
        logits = torch.stack(proposals).float() * 20 - 10
        expected += [1.0, keep / len(ys)] + [0.0] * (len(masks) - 2)
        evaluator.process([{"file_name": record["file_name"]}],
                          [{"proposals": {"mask_logits": logits, "objectness": torch.ones(2)}}])
    result = evaluator.evaluate()["proposals"]
    expected = np.array(expected)
    assert result["num_segments"] == len(expected)
    assert result["recall@0.5"] == pytest.approx(100 * (expected >= 0.5).mean())
    assert result["recall@0.9"] == pytest.approx(100 * (expected >= 0.9).mean())
    assert result["mean_best_IoU"] == pytest.approx(100 * expected.mean())
