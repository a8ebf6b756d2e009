"""Evidence for the synthetic-world study: what a mask class token sees of a ground-truth
segment on the CLIP token grid (``mask_token_view``), and which class a model names the
pixels of each class (``pixel_confusion``).

A mask class token attends to every patch its mask touches (``mask_visibility``: the max-pool
of the thresholded mask by the patch size). On a coarse grid a stuff region, which things
lie on and which borders another stuff region, touches nearly every patch, and the patches it
touches hold much that is not the region: the token sees the things too. ``mask_token_view``
measures this on the ground-truth segments of a written world, per thing and stuff segment:

* ``patches``: share of the image's patches the token attends to (%);
* ``purity``: share of the pixels of those patches that belong to the segment (%).
"""
import json
import os
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..modeling.encoder.maskclip_encoder import mask_visibility

__all__ = ["mask_token_view", "pixel_confusion"]


def mask_token_view(world: str, split: str = "val_all", patch_size: int = 8, threshold: float = 0.5,
                    mask_logit: float = 10.0) -> Dict[str, Dict[str, float]]:
    """Means over the ground-truth segments of ``split`` in the world folder ``world``
    (``.../synthetic_world``), for ``"thing"`` and ``"stuff"`` segments: ``patches`` and
    ``purity`` (see the module docstring). Segments enter as the encoder gets ground-truth
    masks: logits of +-``mask_logit``."""
    from panopticapi.utils import rgb2id

    with open(os.path.join(world, f"panoptic_{split}.json")) as f:
        panoptic = json.load(f)
    isthing = {c["id"]: bool(c["isthing"]) for c in panoptic["categories"]}
    sums = {kind: {"patches": [], "purity": []} for kind in ("thing", "stuff")}
    for annotation in panoptic["annotations"]:
        ids = rgb2id(np.asarray(Image.open(os.path.join(world, "panoptic", split, annotation["file_name"]))))
        if not annotation["segments_info"]:
            continue
        masks = torch.from_numpy(np.stack([ids == s["id"] for s in annotation["segments_info"]]))
        logits = (masks.float() * 2 - 1) * mask_logit  # (S, H, W)
        visible = mask_visibility(logits[None], patch_size, threshold)[0]  # (S, h * w)
        h, w = masks.shape[1] // patch_size, masks.shape[2] // patch_size
        # pixels of each segment in each patch, (S, h * w)
        inside = masks.float().reshape(len(masks), h, patch_size, w, patch_size).sum((2, 4)).flatten(1)
        for segment, seen, count in zip(annotation["segments_info"], visible, inside):
            kind = "thing" if isthing[segment["category_id"]] else "stuff"
            sums[kind]["patches"].append(100.0 * float(seen.float().mean()))
            sums[kind]["purity"].append(100.0 * float(count[seen].sum()) / (int(seen.sum()) * patch_size ** 2))
    return {kind: {k: float(np.mean(v)) if v else float("nan") for k, v in values.items()}
            for kind, values in sums.items()}


def pixel_confusion(world: str, predictions_file: str, split: str = "val_all",
                    classes: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    """Which class the model names the pixels of each class: for every class annotated in
    ``split``, the share (%) of its pixels that Detectron2's ``SemSegEvaluator`` predictions
    (``sem_seg_predictions.json``: one RLE per image and predicted class) give each class.
    Row by row over the ground-truth classes (only ``classes`` if given); absent classes have
    no row."""
    import pycocotools.mask as mask_util

    with open(os.path.join(world, "categories.json")) as f:
        names = {c["id"]: c["name"] for c in json.load(f)["categories"]}
    with open(predictions_file) as f:
        predictions = json.load(f)
    num = len(names)
    counts = np.zeros((num, num), dtype=np.int64)  # (ground truth, predicted), contiguous ids
    by_image: Dict[str, list] = {}
    for p in predictions:
        by_image.setdefault(os.path.splitext(os.path.basename(p["file_name"]))[0], []).append(p)
    for stem, preds in sorted(by_image.items()):
        gt = np.asarray(Image.open(os.path.join(world, "semantic", split, f"{stem}.png"))).astype(np.int64)
        for p in preds:
            predicted = mask_util.decode(p["segmentation"]).astype(bool) & (gt != 255)
            counts[:, p["category_id"] - 1] += np.bincount(gt[predicted], minlength=num)[:num]
    table = {}
    for i in range(num):
        total = counts[i].sum()
        if total and (classes is None or names[i + 1] in classes):
            table[names[i + 1]] = {names[j + 1]: 100.0 * counts[i, j] / total for j in range(num)}
    return table
