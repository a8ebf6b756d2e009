#!/usr/bin/env python
"""Prepare ADE20K-847 (full ADE20K, ADE20K_2021_17_01) validation for maskclip-d2.

Reads ``index_ade20k.pkl`` (``folder``, ``filename``, ``objectnames``) and the
``<image>_seg.png`` segmentations, whose whole-object class per pixel is
``R / 10 * 256 + G`` (0 = unlabeled, k = ``objectnames[k - 1]``). The 847 classes are those
present in at least one training and one validation segmentation, ordered by training pixel
count (most frequent first). Writes, in ADE20K_2021_17_01/:

* ``maskclip_categories_ade20k_847.json``: the classes (``id`` = the class value k);
* ``images_detectron2/validation/*.jpg``: the validation images in one folder;
* ``annotations_detectron2/validation/*.tif``: 16-bit labels 0..846, 65535 elsewhere.

Re-runs skip outputs that are already complete (the class scan included).

    python datasets/prepare_ade20k_full.py [--root datasets]
"""
import os
import pickle
import shutil

import numpy as np
import tqdm

from maskclip_d2.data.datasets.register_ade20k_full import ade20k_full_paths
from maskclip_d2.data.datasets.utils import (
    deterministic_colors,
    read_categories,
    write_json_atomic,
)
from maskclip_d2.utils import atomic_write
from maskclip_d2.data.prepare_utils import (
    argument_parser,
    convert_each,
    read_label_image,
    require_download,
    save_label_image,
)

DOWNLOAD_HINT = (
    "Download the full ADE20K release (ADE20K_2021_17_01.zip) from the ADE20K website and "
    "extract it into the datasets root"
)


def class_map(seg_png):
    """Whole-object class per pixel of an ADE20K ``_seg.png`` (0 = unlabeled)."""
    seg = read_label_image(seg_png).astype(np.int64)
    return seg[..., 0] // 10 * 256 + seg[..., 1]


def _entries(root, index):
    """[(split, image path, segmentation path)] of the release's training/validation images."""
    entries = []
    for folder, filename in zip(index["folder"], index["filename"]):
        split = "validation" if "/validation" in folder else "training"
        image = os.path.join(root, folder, filename)
        entries.append((split, image, os.path.splitext(image)[0] + "_seg.png"))
    return entries


def select_classes(entries, objectnames):
    """The vocabulary: classes in both splits, by decreasing training pixel count."""
    num = len(objectnames) + 1
    train_pixels = np.zeros(num, dtype=np.int64)
    in_val = np.zeros(num, dtype=bool)
    for split, _, seg_png in tqdm.tqdm(entries, desc="ADE20K-847 class scan"):
        counts = np.bincount(class_map(seg_png).ravel(), minlength=num)
        if split == "training":
            train_pixels += counts
        else:
            in_val |= counts > 0
    keep = [k for k in range(1, num) if train_pixels[k] > 0 and in_val[k]]
    keep.sort(key=lambda k: (-train_pixels[k], k))
    colors = deterministic_colors(len(keep))
    return [{"id": k, "name": objectnames[k - 1].strip(), "isthing": 0, "color": colors[i]}
            for i, k in enumerate(keep)]


def _convert(seg_png, lut, out_tif):
    save_label_image(lut[class_map(seg_png)], out_tif)


def prepare(root):
    p = ade20k_full_paths(root)
    require_download([p["dataset_dir"], p["index"]], DOWNLOAD_HINT)
    with open(p["index"], "rb") as f:
        index = pickle.load(f)
    entries = _entries(root, index)
    for _, image, seg_png in entries:
        require_download([image, seg_png], DOWNLOAD_HINT)

    categories = read_categories(p["vocabulary"])
    if categories is None:
        categories = select_classes(entries, index["objectnames"])
        write_json_atomic({"dataset": "ade20k_847", "categories": categories}, p["vocabulary"])
    lut = np.full(len(index["objectnames"]) + 1, 65535, dtype=np.uint16)
    lut[[c["id"] for c in categories]] = np.arange(len(categories))

    val = [(image, seg) for split, image, seg in entries if split == "validation"]
    stems = [os.path.splitext(os.path.basename(image))[0] for image, _ in val]
    convert_each([(image, os.path.join(p["image_root"], s + ".jpg")) for (image, _), s
                  in zip(val, stems)], _copy, "ADE20K-847 val images")
    convert_each([(seg, lut, os.path.join(p["sem_seg_root"], s + ".tif")) for (_, seg), s
                  in zip(val, stems)], _convert, "ADE20K-847 val labels")


def _copy(src, dst):
    with atomic_write(dst) as tmp:
        shutil.copyfile(src, tmp)


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"ADE20K-847 ready under {ade20k_full_paths(args.root)['dataset_dir']}")


if __name__ == "__main__":
    main()
