#!/usr/bin/env python
"""Prepare ADE20K-847 (full ADE20K, ADE20K_2021_17_01) validation for maskclip-d2.

Reads ``index_ade20k.pkl`` (``folder``, ``filename``, ``objectnames``) and the
``<image>_seg.png`` segmentations of the validation images, whose whole-object class per
pixel is ``R / 10 * 256 + G`` (0 = unlabeled, k = ``objectnames[k - 1]``).

The 847 classes are the shipped vocabulary ``ade20k_847`` (Mask2Former's
``ADE20K_SEM_SEG_FULL_CATEGORIES``): its ``id`` is the class value k, its order the
contiguous id. The script first checks that ``objectnames[k - 1]`` names the shipped class
of every id k (one shipped synonym found, word for word, in the official name); a mismatch
stops it with a ``ValueError`` before anything is written. Then it writes, in
ADE20K_2021_17_01/:

* ``images_detectron2/validation/*.jpg``: the validation images in one folder;
* ``annotations_detectron2/validation/*.tif``: 16-bit labels 0..846, 65535 elsewhere.

As MaskFormer's ``datasets/prepare_ade20k_full_sem_seg.py`` (whose output the paper's A-847
numbers were computed on), an image whose short side exceeds 512 pixels is resized so that
its short side is 512 (the long side ``round(long / short * 512)``; OpenCV, bilinear for the
image, nearest for the labels), and every image is saved again with PIL's default JPEG
settings.

Re-runs skip outputs that are already complete.

    python datasets/prepare_ade20k_full.py [--root datasets]
"""
import os
import pickle

import cv2
import numpy as np
from PIL import Image

from maskclip_d2.data.datasets.register_ade20k_full import ade20k_full_paths
from maskclip_d2.data.datasets.prepare_utils import (
    argument_parser,
    check_class_names,
    convert_each,
    names_share_a_synonym,
    read_label_image,
    require_download,
    save_label_image,
)
from maskclip_d2.vocabularies import get_vocabulary
from maskclip_d2.utils import atomic_write

DOWNLOAD_HINT = (
    "Download the full ADE20K release (ADE20K_2021_17_01.zip) from the ADE20K website and "
    "extract it into the datasets root"
)
# The short side of the validation images MaskFormer's preparation writes.
MAX_SHORT_SIDE = 512


def class_map(seg_png):
    """Whole-object class per pixel of an ADE20K ``_seg.png`` (0 = unlabeled)."""
    seg = read_label_image(seg_png).astype(np.int32)
    return seg[..., 0] // 10 * 256 + seg[..., 1]


def validation_entries(root, index):
    """[(image path, segmentation path)] of the release's validation images."""
    entries = []
    for folder, filename in zip(index["folder"], index["filename"]):
        if "/validation" in folder:
            image = os.path.join(root, folder, filename)
            entries.append((image, os.path.splitext(image)[0] + "_seg.png"))
    return entries


def check_objectnames(index_file, objectnames, categories):
    """The shipped class ids k must name the same classes as ``objectnames[k - 1]``."""
    official = {k: objectnames[k - 1] for k in range(1, len(objectnames) + 1)}
    check_class_names(index_file, "ade20k_847", official,
                      {c["id"]: c["name"] for c in categories},
                      same=names_share_a_synonym, complete=False)


def resized_size(height, width, max_short_side=MAX_SHORT_SIDE):
    """(height, width) after MaskFormer's resize: short side ``max_short_side`` when it is
    longer, else unchanged."""
    if width >= height > max_short_side:
        return max_short_side, round(width / height * max_short_side)
    if height >= width > max_short_side:
        return round(height / width * max_short_side), max_short_side
    return height, width


def _convert(image_file, seg_png, lut, out_jpg, out_tif):
    with Image.open(image_file) as img:
        image = np.asarray(img if img.mode in ("RGB", "L") else img.convert("RGB"))
    classes = class_map(seg_png)
    height, width = resized_size(*image.shape[:2])
    if (height, width) != image.shape[:2]:
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        classes = cv2.resize(classes, (width, height), interpolation=cv2.INTER_NEAREST)
    with atomic_write(out_jpg) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG")
    save_label_image(lut[classes], out_tif)  # written last: its presence marks the job done


def prepare(root):
    p = ade20k_full_paths(root)
    require_download([p["dataset_dir"], p["index"]], DOWNLOAD_HINT)
    with open(p["index"], "rb") as f:
        index = pickle.load(f)
    categories = get_vocabulary("ade20k_847")
    check_objectnames(p["index"], index["objectnames"], categories)
    val = validation_entries(root, index)
    for image, seg_png in val:
        require_download([image, seg_png], DOWNLOAD_HINT)

    lut = np.full(len(index["objectnames"]) + 1, 65535, dtype=np.uint16)
    lut[[c["id"] for c in categories]] = np.arange(len(categories))
    jobs = []
    for image, seg_png in val:
        stem = os.path.splitext(os.path.basename(image))[0]
        jobs.append((image, seg_png, lut, os.path.join(p["image_root"], stem + ".jpg"),
                     os.path.join(p["sem_seg_root"], stem + ".tif")))
    convert_each(jobs, _convert, "ADE20K-847 val images and labels")


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"ADE20K-847 ready under {ade20k_full_paths(args.root)['dataset_dir']}")


if __name__ == "__main__":
    main()
