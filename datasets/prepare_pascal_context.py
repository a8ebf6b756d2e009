#!/usr/bin/env python
"""Prepare PASCAL Context val (59 and 459 classes) for maskclip-d2.

Reads VOC2010 (JPEGImages, ImageSets/Main/val.txt) and the PASCAL Context release
(``trainval/*.mat`` with a ``LabelMap`` of labels.txt ids, 0 = unlabeled; ``labels.txt``).
Writes, in pascal_context/:

* ``annotations_detectron2/pc459_val/*.tif``: 16-bit labels, labels.txt id - 1, 65535 ignore;
* ``annotations_detectron2/pc59_val/*.png``: the 59-class benchmark, 0..58 in the order of
  ``PASCAL_CONTEXT_59``, 255 for unlabeled pixels and every other class;
* ``maskclip_categories_pc459.json``, ``maskclip_categories_pc59.json``: names of labels.txt.

Re-runs skip outputs that are already complete.

    python datasets/prepare_pascal_context.py [--root datasets]
"""
import os

import numpy as np
import scipy.io

from maskclip_d2.data.datasets.register_pascal_context import (
    PASCAL_CONTEXT_59,
    pascal_context_paths,
)
from maskclip_d2.data.datasets.utils import (
    deterministic_colors,
    write_json_atomic,
)
from maskclip_d2.data.prepare_utils import argument_parser, convert_each, require_download, save_label_image

NUM_CLASSES = 459
DOWNLOAD_HINT = (
    "Download VOCtrainval_03-May-2010.tar (PASCAL VOC 2010) and extract it into the datasets "
    "root (VOCdevkit/VOC2010/); download trainval.tar.gz of PASCAL Context and extract it "
    "into pascal_context/ (pascal_context/trainval/*.mat, pascal_context/labels.txt)"
)
# Concatenated VOC names -> words, for the text encoder.
_READABLE = {"pottedplant": "potted plant", "tvmonitor": "tv monitor",
             "diningtable": "dining table"}


def read_labels(path):
    """labels.txt ("<id>: <name>" per line) -> {id: name}."""
    labels = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                idx, name = line.split(":", 1)
                labels[int(idx)] = name.strip()
    if sorted(labels) != list(range(1, NUM_CLASSES + 1)):
        raise ValueError(f"{path}: expected ids 1..{NUM_CLASSES}, got {len(labels)} lines")
    return labels


def _convert(mat_file, lut459, lut59, out59, out459):
    label = scipy.io.loadmat(mat_file)["LabelMap"].astype(np.int64)
    save_label_image(lut59[label], out59)
    save_label_image(lut459[label], out459)  # written last: its presence marks the job done


def prepare(root):
    p459, p59 = pascal_context_paths(root, 459), pascal_context_paths(root, 59)
    require_download([p459["image_root"], p459["val_list"], p459["dataset_dir"],
                      p459["labels"], p459["mat_root"]], DOWNLOAD_HINT)
    labels = read_labels(p459["labels"])
    by_name = {name: idx for idx, name in labels.items()}
    missing = [n for n in PASCAL_CONTEXT_59 if n not in by_name]
    if missing:
        raise ValueError(f"{p459['labels']}: no line for the 59-class names {missing}")
    ids59 = [by_name[n] for n in PASCAL_CONTEXT_59]

    lut459 = np.full(NUM_CLASSES + 1, 65535, dtype=np.uint16)
    lut459[1:] = np.arange(NUM_CLASSES)
    lut59 = np.full(NUM_CLASSES + 1, 255, dtype=np.uint8)
    lut59[ids59] = np.arange(len(ids59))

    with open(p459["val_list"]) as f:
        stems = [line.strip() for line in f if line.strip()]
    jobs = []
    for stem in stems:
        mat = os.path.join(p459["mat_root"], stem + ".mat")
        require_download([mat], DOWNLOAD_HINT)
        jobs.append((mat, lut459, lut59, os.path.join(p59["sem_seg_root"], stem + ".png"),
                     os.path.join(p459["sem_seg_root"], stem + ".tif")))
    convert_each(jobs, _convert, "PASCAL Context val labels")

    colors = deterministic_colors(NUM_CLASSES)
    readable = {i: _READABLE.get(labels[i], labels[i]) for i in labels}
    vocabularies = {
        459: [{"id": i - 1, "name": readable[i], "isthing": 0, "color": colors[i - 1]}
              for i in range(1, NUM_CLASSES + 1)],
        59: [{"id": k, "name": readable[i], "isthing": 0, "color": colors[i - 1]}
             for k, i in enumerate(ids59)],
    }
    for n, categories in vocabularies.items():
        path = pascal_context_paths(root, n)["vocabulary"]
        if not os.path.exists(path):
            write_json_atomic({"dataset": f"pascal_context_{n}", "categories": categories}, path)


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"PASCAL Context ready under {os.path.join(args.root, 'pascal_context')}")


if __name__ == "__main__":
    main()
