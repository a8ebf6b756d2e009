"""Masks of your own for ``Predictor.classify_masks``: read, checked, refused with a reason.

Three forms, all for one image of (H, W) pixels:

* an (N, H, W) boolean array or tensor, one mask per entry;
* a label image file (PNG): 8- or 16-bit gray, or palette, every non-zero value one mask
  (0 is "no mask"), masks in increasing label order; an RGB PNG is read as COCO panoptic ids
  (id = R + 256 G + 256^2 B, ``panopticapi.utils.rgb2id``);
* COCO RLE: a list of RLE dicts (``{"size": [H, W], "counts": ...}``, compressed or not, as
  ``pycocotools.mask.encode`` or SAM's ``output_mode="coco_rle"`` give them), or of COCO
  annotations holding one in ``"segmentation"``; or the path of a JSON file with such a list.

Every mask must cover at least one pixel, have the image's size, and there may be at most
``MODEL.MASKCLIP.MAX_GIVEN_MASKS`` of them.
"""
import json
import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

__all__ = ["read_masks", "LABEL_IMAGE_EXTENSIONS"]

LABEL_IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")


def _label_image_masks(path: str) -> Tuple[np.ndarray, List[int]]:
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image)
    except Exception as err:  # PIL raises many kinds for damaged files
        raise ValueError(f"{path}: not a readable label image ({err})") from err
    if mode in ("RGB", "RGBA"):
        from panopticapi.utils import rgb2id

        labels = rgb2id(labels[..., :3].astype(np.uint32))
    elif labels.ndim != 2 or mode in ("F", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
        raise ValueError(
            f"{path}: a label image must be gray (8 or 16 bit), palette, or an RGB panoptic PNG, "
            f"got mode {mode}"
        )
    ids = [int(v) for v in np.unique(labels) if v != 0]
    masks = labels[None] == np.asarray(ids, dtype=labels.dtype)[:, None, None]
    return masks.reshape(len(ids), *labels.shape[:2]), ids


def _rle_masks(rles: Sequence, source: str) -> np.ndarray:
    from pycocotools import mask as mask_util

    decoded = []
    for i, item in enumerate(rles):
        rle = item.get("segmentation", item) if isinstance(item, dict) else item
        if not (isinstance(rle, dict) and "size" in rle and "counts" in rle):
            raise ValueError(
                f"{source}: entry {i} is not a COCO RLE ({{'size': [H, W], 'counts': ...}}) nor an "
                f"annotation with one in 'segmentation'"
            )
        if isinstance(rle["counts"], list):  # uncompressed
            rle = mask_util.frPyObjects(rle, *rle["size"])
        elif isinstance(rle["counts"], str):
            rle = dict(rle, counts=rle["counts"].encode("ascii"))
        decoded.append(mask_util.decode(rle).astype(bool))
    if not decoded:
        return np.zeros((0, 0, 0), dtype=bool)
    sizes = {m.shape for m in decoded}
    if len(sizes) > 1:
        raise ValueError(f"{source}: the RLE masks have different sizes {sorted(sizes)}")
    return np.stack(decoded)


def read_masks(masks, image_size: Tuple[int, int], max_masks: int) -> Tuple[np.ndarray, List[int]]:
    """(N, H, W) bool masks and N ids (label values of a label image, else 0..N-1) from any
    of the forms in the module docstring; ValueError naming what is wrong otherwise."""
    height, width = image_size
    source = "masks"
    ids = None
    if isinstance(masks, (str, os.PathLike)):
        source = os.fspath(masks)
        if not os.path.isfile(source):
            raise ValueError(f"{source}: no such masks file")
        if source.lower().endswith(".json"):
            with open(source) as f:
                try:
                    content = json.load(f)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}: not a JSON list of COCO RLEs ({err})") from None
            if isinstance(content, dict) and "annotations" in content:
                content = content["annotations"]
            if not isinstance(content, list):
                raise ValueError(f"{source}: expected a JSON list of COCO RLEs or annotations")
            array = _rle_masks(content, source)
        else:
            array, ids = _label_image_masks(source)
            if not ids:
                raise ValueError(f"{source}: the label image has no mask (every pixel is 0)")
    elif isinstance(masks, (list, tuple)) and (not masks or isinstance(masks[0], dict)):
        array = _rle_masks(masks, "masks")
    else:
        array = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
        if array.dtype != np.bool_:
            hint = ""
            if array.size and np.isin(array, (0, 1)).all():
                hint = " (its values are 0 / 1: pass masks.astype(bool))"
            raise ValueError(f"masks must be boolean, got dtype {array.dtype}{hint}")
        if array.ndim == 2:
            raise ValueError(f"masks must be (N, H, W), got one (H, W) mask {array.shape}: pass masks[None]")
        if array.ndim != 3:
            raise ValueError(f"masks must be (N, H, W) booleans, got shape {array.shape}")
    if len(array) == 0:
        raise ValueError(f"{source}: no masks given")
    if tuple(array.shape[1:]) != (height, width):
        raise ValueError(
            f"{source}: masks of size {tuple(array.shape[1:])} (H, W) for an image of size "
            f"{(height, width)}: masks must have the image's size"
        )
    if len(array) > max_masks:
        raise ValueError(
            f"{source}: {len(array)} masks, more than MODEL.MASKCLIP.MAX_GIVEN_MASKS = {max_masks}: "
            "classify them in several calls or raise the limit"
        )
    empty = np.flatnonzero(~array.reshape(len(array), -1).any(1))
    if len(empty):
        raise ValueError(
            f"{source}: mask(s) {empty.tolist()[:10]}{' ...' if len(empty) > 10 else ''} "
            f"cover no pixel: drop empty masks"
        )
    return np.ascontiguousarray(array), ids if ids is not None else list(range(len(array)))
