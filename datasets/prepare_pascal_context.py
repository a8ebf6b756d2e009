#!/usr/bin/env python
"""Prepare PASCAL Context val (59 and 459 classes) for maskclip-d2.

Reads VOC2010 (JPEGImages, ImageSets/Main/val.txt) and the PASCAL Context release
(``trainval/*.mat`` with a ``LabelMap`` of labels.txt ids, 0 = unlabeled; ``labels.txt``).
First it checks that labels.txt names the classes of the shipped vocabulary
``pascal_context_459`` (id - 1 = shipped id; the same name, VOC's "pottedplant" and
"tvmonitor" read as "potted plant" and "tv monitor"); a mismatch stops it with a
``ValueError`` before anything is written. Then it writes, in pascal_context/:

* ``annotations_detectron2/pc459_val/*.tif``: 16-bit labels, labels.txt id - 1, 65535 ignore;
* ``annotations_detectron2/pc59_val/*.png``: the 59-class benchmark, 0..58 in the order of
  the shipped ``pascal_context_59``, 255 for unlabeled pixels and every other class.

Re-runs skip outputs that are already complete.

    python datasets/prepare_pascal_context.py [--root datasets]
"""
import os

import numpy as np
import scipy.io

from maskclip_d2.data.datasets.register_pascal_context import pascal_context_paths
from maskclip_d2.data.datasets.prepare_utils import (
    argument_parser,
    check_class_names,
    convert_each,
    require_download,
    save_label_image,
)
from maskclip_d2.vocabularies import PASCAL_CONTEXT_READABLE, get_vocabulary

NUM_CLASSES = 459
DOWNLOAD_HINT = (
    "Download VOCtrainval_03-May-2010.tar (PASCAL VOC 2010) and extract it into the datasets "
    "root (VOCdevkit/VOC2010/); download trainval.tar.gz of PASCAL Context and extract it "
    "into pascal_context/ (pascal_context/trainval/*.mat, pascal_context/labels.txt)"
)


def read_labels(path):
    """labels.txt ("<id>: <name>" per line) -> {id: name}."""
    labels = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                idx, name = line.split(":", 1)
                labels[int(idx)] = name.strip()
    return labels


def check_labels(path):
    """labels.txt must name the shipped 459 classes (labels.txt id = shipped id + 1)."""
    official = {i: PASCAL_CONTEXT_READABLE.get(name, name) for i, name in read_labels(path).items()}
    check_class_names(path, "pascal_context_459", official,
                      {c["id"] + 1: c["name"] for c in get_vocabulary("pascal_context_459")})


def _convert(mat_file, lut459, lut59, out59, out459):
    label = scipy.io.loadmat(mat_file)["LabelMap"].astype(np.int64)
    save_label_image(lut59[label], out59)
    save_label_image(lut459[label], out459)  # written last: its presence marks the job done


def prepare(root):
    p459, p59 = pascal_context_paths(root, 459), pascal_context_paths(root, 59)
    require_download([p459["image_root"], p459["val_list"], p459["dataset_dir"],
                      p459["labels"], p459["mat_root"]], DOWNLOAD_HINT)
    check_labels(p459["labels"])
    ids59 = [c["id"] + 1 for c in get_vocabulary("pascal_context_59")]  # labels.txt ids

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


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"PASCAL Context ready under {os.path.join(args.root, 'pascal_context')}")


if __name__ == "__main__":
    main()
