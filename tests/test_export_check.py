"""The export self-check (maskclip_d2/export_check.py): float32 rounding passes whatever the
output's magnitude, a wrong output fails, segments compare by what they are."""
import pytest
import torch

from maskclip_d2.export_check import RELATIVE_TOLERANCES, compare_outputs, compare_segments, format_report


def outputs(scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "class_logits": torch.randn(1, 100, 151, generator=g) * 30,
        "mask_logits": torch.randn(1, 100, 336, 336, generator=g) * scale,
        "objectness": torch.rand(1, 100, generator=g),
    }


def test_rounding_sized_differences_pass_and_wrong_outputs_fail():
    ours = outputs(scale=8.0)
    # what `make demo`'s model showed: mask logits 1.3e-4 apart (an absolute 1e-4 called it an error)
    theirs = {k: v.clone() for k, v in ours.items()}
    theirs["mask_logits"][0, 3, 10, 10] += 1.3e-4
    theirs["class_logits"] += 2e-3  # 100 x (cosine rounding of 2e-5)
    report = compare_outputs(ours, theirs)
    assert all(r["within"] for r in report.values())
    assert report["mask_logits"]["max_abs"] == pytest.approx(1.3e-4, rel=0.05)
    r = report["mask_logits"]
    assert r["relative"] == r["max_abs"] / r["scale"] and r["scale"] == ours["mask_logits"].abs().max()
    assert "TOO LARGE" not in format_report(report, {})

    wrong = {k: v.clone() for k, v in ours.items()}
    wrong["mask_logits"][0, 3] = -wrong["mask_logits"][0, 3]  # e.g. a sign lost in one op
    report = compare_outputs(ours, wrong)
    assert not report["mask_logits"]["within"] and report["class_logits"]["within"]
    assert "mask_logits" in format_report(report, {}) and "TOO LARGE" in format_report(report, {})


def test_small_outputs_are_compared_against_a_scale_of_one():
    ours = {"objectness": torch.full((1, 5), 1e-6)}
    theirs = {"objectness": torch.full((1, 5), 2e-6)}
    report = compare_outputs(ours, theirs, {"objectness": RELATIVE_TOLERANCES["objectness"]})
    assert report["objectness"]["scale"] == 1.0 and report["objectness"]["within"]
    with pytest.raises(ValueError, match=r"objectness: shapes differ, \(1, 5\) against \(1, 4\)"):
        compare_outputs(ours, {"objectness": torch.zeros(1, 4)}, {"objectness": 1e-3})


def test_segments_compare_by_class_not_by_id():
    ids = torch.tensor([[1, 1, 2], [2, 0, 0]])
    segments = [{"id": 1, "category_id": 4}, {"id": 2, "category_id": 7}]
    renumbered = torch.tensor([[5, 5, 3], [3, 0, 3]])  # one pixel flipped to class 7
    other = [{"id": 3, "category_id": 7}, {"id": 5, "category_id": 4}]
    sem = torch.zeros(9, 2, 3)
    report = compare_segments({"panoptic_seg": (ids, segments), "sem_seg": sem},
                              {"panoptic_seg": (renumbered, other), "sem_seg": sem})
    assert report == {"segments": 2, "other_segments": 2, "panoptic_pixels_agree": pytest.approx(5 / 6),
                      "semantic_pixels_agree": 1.0}
    assert "83.33% of pixels in a segment of the same class" in format_report({}, report)


def test_class_argmax_agreement_is_reported_per_mask():
    ours = outputs(scale=8.0)
    theirs = {k: v.clone() for k, v in ours.items()}
    logits = theirs["class_logits"]
    masks = logits.shape[:-1].numel()
    first = logits[0, 0]
    first[first.argmin()] = first.max() + 1  # one mask changes its class
    report = compare_outputs(ours, theirs)
    assert report["class_logits"]["masks"] == masks
    assert report["class_logits"]["argmax_agree"] == pytest.approx((masks - 1) / masks)
    assert f"class argmax equal for {100 * (masks - 1) / masks:.1f}% of {masks} masks" in format_report(report, {})
