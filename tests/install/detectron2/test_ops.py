"""detectron2.layers ops that upstream compiles into detectron2._C: deformable convolutions
(through torchvision here), rotated-box ops, and collect_env_info."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, nms, roi_align

import detectron2
from detectron2.layers import (
    DeformConv,
    ModulatedDeformConv,
    ROIAlignRotated,
    nms_rotated,
)
from detectron2.layers.rotated_boxes import pairwise_iou_rotated


def _grads(out, *tensors):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return torch.autograd.grad(out, tensors, grad_outputs=g)


# --------------------------------------------------------------------------------------------
# Deformable convolution
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "stride,padding,dilation,groups,dgroups",
    [(1, 1, 1, 1, 1), (2, 2, 2, 2, 2)],
)
def test_deform_conv_with_zero_offsets_is_conv2d(stride, padding, dilation, groups, dgroups):
    torch.manual_seed(0)
    conv = DeformConv(4, 6, 3, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, deformable_groups=dgroups).double()
    x = torch.randn(2, 4, 9, 11, dtype=torch.double, requires_grad=True)
    ref = F.conv2d(x, conv.weight, None, stride, padding, dilation, groups)
    offset = torch.zeros(2, 2 * dgroups * 9, *ref.shape[-2:], dtype=torch.double,
                         requires_grad=True)
    out = conv(x, offset)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref)
    gx, gw, goff = _grads(out, x, conv.weight, offset)
    rx, rw = _grads(ref, x, conv.weight)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    assert goff.shape == offset.shape and goff.abs().sum() > 0  # offsets do get gradients


def test_deform_conv_integer_offset_shifts_the_sampling():
    """A uniform offset (dy, dx) = (1, 0) at every kernel tap makes output row y read rows
    y .. y+2 of the zero-extended image instead of y-1 .. y+1: a plain convolution of the image
    padded with no row on top and 2 at the bottom. This pins the offset layout (dy before dx)
    and the zeros outside the image."""
    torch.manual_seed(0)
    conv = DeformConv(3, 5, 3, padding=1).double()
    x = torch.randn(1, 3, 7, 8, dtype=torch.double)
    offset = torch.zeros(1, 18, 7, 8, dtype=torch.double)
    offset[:, 0::2] = 1.0  # dy
    ref = F.conv2d(F.pad(x, (1, 1, 0, 2)), conv.weight)
    torch.testing.assert_close(conv(x, offset), ref)
    # and (dy, dx) = (0, -1): columns x-2 .. x
    offset = torch.zeros(1, 18, 7, 8, dtype=torch.double)
    offset[:, 1::2] = -1.0  # dx
    torch.testing.assert_close(conv(x, offset), F.conv2d(F.pad(x, (2, 0, 1, 1)), conv.weight))


def test_deform_conv_empty_batch():
    conv = DeformConv(3, 5, 3, padding=1)
    out = conv(torch.zeros(0, 3, 7, 8), torch.zeros(0, 18, 7, 8))
    assert out.shape == (0, 5, 7, 8)


def test_modulated_deform_conv_with_zero_offsets_and_unit_mask_is_conv2d():
    torch.manual_seed(0)
    conv = ModulatedDeformConv(4, 6, 3, padding=1, bias=True).double()
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 4, 8, 10, dtype=torch.double, requires_grad=True)
    offset = torch.zeros(2, 18, 8, 10, dtype=torch.double)
    mask = torch.ones(2, 9, 8, 10, dtype=torch.double)
    out = conv(x, offset, mask)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out, ref)
    gx, gw, gb = _grads(out, x, conv.weight, conv.bias)
    rx, rw, rb = _grads(ref, x, conv.weight, conv.bias)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    torch.testing.assert_close(gb, rb)
    # the mask modulates every tap: mask 0.5 halves the convolution, not the bias
    half = conv(x, offset, mask * 0.5)
    torch.testing.assert_close(half, 0.5 * F.conv2d(x, conv.weight, padding=1) + conv.bias.view(
        1, -1, 1, 1))


# --------------------------------------------------------------------------------------------
# Rotated-box ops: compiled-only upstream; this build implements them in PyTorch
# (detectron2/layers/rotated_ops.py), checked against torchvision's axis-aligned ops. A build
# that raises NotImplementedError for one of them fails here.
# --------------------------------------------------------------------------------------------
def _call_rotated(op_name, fn):
    try:
        return fn()
    except NotImplementedError as e:
        pytest.fail(f"rotated op '{op_name}' is not implemented in this detectron2 build: {e}")


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(n, 2, generator=g) * 40 + 10
    wh = torch.rand(n, 2, generator=g) * 20 + 4
    return torch.cat([ctr, wh, torch.zeros(n, 1)], dim=1)  # (cx, cy, w, h, angle=0)


def _xyxy(rboxes):
    cx, cy, w, h = rboxes[:, 0], rboxes[:, 1], rboxes[:, 2], rboxes[:, 3]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def _rot90(rboxes):
    """The same regions described with angle 90 and swapped width / height."""
    return torch.cat([rboxes[:, :2], rboxes[:, 3:4], rboxes[:, 2:3],
                      torch.full_like(rboxes[:, :1], 90.0)], dim=1)


def test_pairwise_iou_rotated():
    a, b = _random_boxes(6, 0), _random_boxes(5, 1)
    iou = _call_rotated("box_iou_rotated", lambda: pairwise_iou_rotated(a, b))
    assert iou.shape == (6, 5)
    torch.testing.assert_close(iou, box_iou(_xyxy(a), _xyxy(b)), atol=1e-5, rtol=1e-4)
    # rotated by 90 degrees with swapped w/h: the same region
    torch.testing.assert_close(torch.diag(pairwise_iou_rotated(a, _rot90(a))),
                               torch.ones(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(pairwise_iou_rotated(_rot90(a), _rot90(b)), iou,
                               atol=1e-5, rtol=1e-4)
    # a square and the same square turned by 45 degrees: the intersection is a regular
    # octagon of area 2(sqrt2 - 1) s^2, so IoU = sqrt(2) / 2
    sq = torch.tensor([[20.0, 20.0, 10.0, 10.0, 0.0]])
    turned = torch.tensor([[20.0, 20.0, 10.0, 10.0, 45.0]])
    assert pairwise_iou_rotated(sq, turned).item() == pytest.approx(math.sqrt(2) / 2, abs=1e-4)


def test_nms_rotated():
    boxes = _random_boxes(12, 2)
    scores = torch.rand(12, generator=torch.Generator().manual_seed(3))
    keep = _call_rotated("nms_rotated", lambda: nms_rotated(boxes, scores, 0.3))
    assert keep.dtype == torch.int64
    assert keep.tolist() == nms(_xyxy(boxes), scores, 0.3).tolist()
    # a box and its 90-degree description are the same region: the lower score is suppressed
    two = torch.cat([boxes[:1], _rot90(boxes[:1])])
    assert nms_rotated(two, torch.tensor([0.4, 0.9]), 0.5).tolist() == [1]


def test_roi_align_rotated():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(2, 3, 16, 20, generator=g)
    rboxes = torch.tensor([[6.0, 7.0, 8.0, 6.0, 0.0], [10.5, 8.0, 9.0, 10.0, 0.0]])
    rois = torch.cat([torch.tensor([[0.0], [1.0]]), rboxes], dim=1)
    op = ROIAlignRotated(output_size=(4, 5), spatial_scale=1.0, sampling_ratio=2)
    out = _call_rotated("roi_align_rotated", lambda: op(feats, rois))
    assert out.shape == (2, 3, 4, 5)
    # angle 0: the axis-aligned ROIAlign with continuous (aligned=True) coordinates
    ref_rois = torch.cat([rois[:, :1], _xyxy(rboxes)], dim=1)
    ref = roi_align(feats, ref_rois, (4, 5), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    # angle 180: the same samples in reverse order along both axes
    rois180 = rois.clone()
    rois180[:, 5] = 180.0
    torch.testing.assert_close(op(feats, rois180), torch.flip(out, dims=(-2, -1)),
                               atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
def test_collect_env_info():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert "detectron2" in info
    assert detectron2.__version__ in info
    assert ("maskclip.patched" in info) == ("maskclip.patched" in detectron2.__version__)
    assert "PyTorch" in info and torch.__version__ in info
