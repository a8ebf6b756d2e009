"""Hungarian matcher: pairwise costs by hand and optimal assignments."""
import itertools
import math

import torch

from maskclip_d2.modeling.losses.matcher import HungarianMatcher, batch_dice_cost, batch_sigmoid_ce_cost


def _bce(x, t):
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def test_pairwise_costs_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    ce = batch_sigmoid_ce_cost(logits, targets)
    dice = batch_dice_cost(logits, targets)
    assert ce.shape == dice.shape == (2, 3)
    for n, m in itertools.product(range(2), range(3)):
        x, t = logits[n].tolist(), targets[m].tolist()
        assert math.isclose(ce[n, m].item(), (_bce(x[0], t[0]) + _bce(x[1], t[1])) / 2, rel_tol=1e-5)
        p = [1 / (1 + math.exp(-v)) for v in x]
        expected = 1 - (2 * (p[0] * t[0] + p[1] * t[1]) + 1) / (sum(p) + sum(t) + 1)
        assert math.isclose(dice[n, m].item(), expected, rel_tol=1e-5)


def _disc(cy, cx, r, size=32):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2).float()


def test_permuted_ground_truth_is_matched_back_to_its_queries():
    torch.manual_seed(0)
    shapes = [_disc(8, 8, 5), _disc(20, 24, 7), _disc(25, 6, 4), _disc(6, 26, 3)]
    # 6 queries; queries 1, 2, 4, 5 predict the four shapes sharply, 0 and 3 predict nothing
    pred_masks = torch.full((6, 32, 32), -10.0)
    owner = {1: 0, 2: 1, 4: 2, 5: 3}
    for query, shape in owner.items():
        pred_masks[query] = shapes[shape] * 20 - 10
    pred_logits = torch.zeros(6, 2)
    perm = torch.tensor([2, 0, 3, 1])  # target j is shape perm[j]
    targets = [{"labels": torch.zeros(4, dtype=torch.int64), "masks": torch.stack([shapes[i] for i in perm])}]
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=1024)
    (queries, target_idx), = matcher({"pred_logits": pred_logits[None], "pred_masks": pred_masks[None]}, targets)
    matched = {int(q): int(perm[t]) for q, t in zip(queries, target_idx)}
    assert matched == owner


def test_assignment_is_optimal_against_brute_force():
    """With only the class cost, the matcher must minimise -sum p(label) exactly."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 5, 4, generator=g)
    labels = torch.tensor([2, 0, 2])
    targets = [{"labels": labels, "masks": torch.zeros(3, 8, 8)}]
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0, num_points=16)
    (queries, target_idx), = matcher({"pred_logits": logits, "pred_masks": torch.zeros(1, 5, 8, 8)}, targets)
    probs = logits[0].softmax(-1)
    cost = -sum(probs[q, labels[t]] for q, t in zip(queries, target_idx))
    best = min(
        -sum(probs[q, labels[t]] for t, q in enumerate(choice))
        for choice in itertools.permutations(range(5), 3)
    )
    assert len(queries) == 3 and len(set(queries.tolist())) == 3
    assert math.isclose(float(cost), float(best), rel_tol=1e-6)


def test_image_without_targets_matches_nothing():
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=16)
    targets = [{"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)}]
    (queries, target_idx), = matcher({"pred_logits": torch.zeros(1, 3, 2), "pred_masks": torch.zeros(1, 3, 4, 4)}, targets)
    assert len(queries) == len(target_idx) == 0
