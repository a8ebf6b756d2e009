"""Acceptance: the class-agnostic proposal network overfits a fixed batch of generated images."""
import time

import torch
from detectron2.modeling import build_model

import maskclip_d2  # noqa: F401  (registers the meta-architecture)
from helpers.tiny_mask2former import shapes_batch, tiny_cfg

ITERATIONS = 100
LEARNING_RATE = 1e-3


def _iou_table(gt_masks: torch.Tensor, proposals: torch.Tensor) -> torch.Tensor:
    """(G, Q) IoU of every ground-truth mask with every proposal, both bool (N, H, W)."""
    inter = (gt_masks[:, None] & proposals[None]).sum((-2, -1)).float()
    union = (gt_masks[:, None] | proposals[None]).sum((-2, -1)).float()
    return inter / union.clamp(min=1)


def test_stage1_overfits_generated_shapes_to_iou_above_0_8():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).train()
    batch = shapes_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

    start = time.perf_counter()
    for iteration in range(ITERATIONS):
        losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if iteration == 0:
            first_loss = loss.item()
    print(f"\nstage-1 overfit: loss {first_loss:.3f} -> {loss.item():.3f} in {ITERATIONS} iterations, "
          f"{time.perf_counter() - start:.1f} s")

    model.eval()
    with torch.no_grad():
        results = model(batch)
    for index, (inputs, result) in enumerate(zip(batch, results)):
        proposals = result["proposals"]
        gt_masks = inputs["instances"].gt_masks
        assert proposals["mask_logits"].shape == (8, 64, 64)
        ious = _iou_table(gt_masks, proposals["mask_logits"] > 0)
        confident = proposals["objectness"] > 0.5
        best_any = ious.max(dim=1).values
        best_iou, best_query = ious.masked_fill(~confident[None], -1.0).max(dim=1)
        print(f"image {index}: {int(confident.sum())} of 8 proposals with objectness > 0.5; "
              f"best IoU per object among them {[round(v, 3) for v in best_iou.tolist()]} "
              f"(among all proposals {[round(v, 3) for v in best_any.tolist()]})")
        assert (best_iou > 0.8).all()
        # distinct objects are found by distinct proposals
        assert len(set(best_query.tolist())) == len(gt_masks)
