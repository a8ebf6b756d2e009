#!/usr/bin/env python
"""Prepare ADE20K-150 (ADEChallengeData2016) validation for maskclip-d2.

Reads the official download: images and semantic PNGs (ADEChallengeData2016.zip), the
instance PNGs (annotations_instance.tar, R = instance-class id, G = instance id), the class
list ``objectInfo150.csv`` (or ``objectInfo150.txt``) and the instance-to-semantic class map
``categoryMapping.txt`` of the instance-segmentation devkit. Writes, in ADEChallengeData2016/:

* ``annotations_detectron2/validation/*.png``: semantic labels, id - 1 (void 0 -> 255);
* ``ade20k_panoptic_val/*.png`` + ``ade20k_panoptic_val.json``: COCO panoptic format, stuff
  segments from the semantic labels, thing segments from the instance labels (on top);
* ``ade20k_instance_val.json``: COCO instance format, RLE masks of the 100 thing classes;
* ``maskclip_categories_ade20k_150.json``: the 150 names (synonyms joined by ", "), thing
  flags (things = classes of categoryMapping.txt) and colours.

Re-runs skip outputs that are already complete.

    python datasets/prepare_ade20k_150.py [--root datasets]
"""
import csv
import os
import re

import numpy as np
import pycocotools.mask as mask_util
import tqdm
from panopticapi.utils import id2rgb

from maskclip_d2.data.datasets.register_ade20k_150 import ade20k_150_paths
from maskclip_d2.data.datasets.utils import (
    deterministic_colors,
    write_json_atomic,
)
from maskclip_d2.data.prepare_utils import (
    argument_parser,
    convert_each,
    read_label_image,
    require_download,
    save_label_image,
)

NUM_CLASSES = 150
DOWNLOAD_HINT = (
    "Download ADEChallengeData2016.zip and annotations_instance.tar from the MIT Scene Parsing "
    "benchmark and extract them into ADEChallengeData2016/; put objectInfo150.csv and "
    "instanceSegmentation/categoryMapping.txt of the sceneparsing devkit next to them"
)


def clean_name(raw):
    """ "building;edifice" or "building, edifice" -> "building, edifice"."""
    return ", ".join(part.strip() for part in re.split(r"[;,]", raw) if part.strip())


def read_object_info(path):
    """The 150 class names of ``objectInfo150.csv`` (comma-separated) or ``.txt`` (tabs)."""
    if not os.path.exists(path):
        txt = os.path.splitext(path)[0] + ".txt"
        path = txt if os.path.exists(txt) else path
    require_download([path], DOWNLOAD_HINT)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if path.endswith(".txt") else ","))
    rows = sorted(rows, key=lambda r: int(r["Idx"]))
    if [int(r["Idx"]) for r in rows] != list(range(1, NUM_CLASSES + 1)):
        raise ValueError(f"{path}: expected the rows Idx 1..{NUM_CLASSES}, got {len(rows)} rows")
    return [clean_name(r["Name"]) for r in rows]


def read_category_mapping(path):
    """``categoryMapping.txt`` -> {instance-class id: semantic id - 1}."""
    require_download([path], DOWNLOAD_HINT)
    mapping = {}
    with open(path) as f:
        for line in f.readlines()[1:]:  # header: Instance100 SceneParse150 FullADE20K
            fields = line.split()
            if fields:
                mapping[int(fields[0])] = int(fields[1]) - 1
    if not mapping or not all(0 <= s < NUM_CLASSES for s in mapping.values()):
        raise ValueError(f"{path}: expected lines '<instance id> <semantic id 1..150> <ADE id>'")
    return mapping


def _semantic(raw_png, out_png):
    save_label_image(read_label_image(raw_png).astype(np.uint8) - np.uint8(1), out_png)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _instances(instance_png, instance_to_semantic):
    """[(semantic id - 1, bool mask)] of the things of one instance PNG."""
    ins = read_label_image(instance_png)
    classes, ids = ins[..., 0].astype(np.int64), ins[..., 1].astype(np.int64)
    # one code per (class, instance) pair present; np.unique sorts them as the pairs would
    codes = np.unique(classes[ids > 0] * 256 + ids[ids > 0])
    return [
        (instance_to_semantic[cls], (classes == cls) & (ids == inst))
        for cls, inst in zip((codes // 256).tolist(), (codes % 256).tolist())
    ]


def _panoptic(sem, things, isthing):
    """Panoptic id map (H, W) and segments_info: stuff from ``sem``, things on top."""
    pan = np.zeros(sem.shape, dtype=np.uint32)
    seg_classes = []
    for cls in np.unique(sem):
        if cls != 255 and not isthing[cls]:
            seg_classes.append(int(cls))
            pan[sem == cls] = len(seg_classes)
    for cls, mask in things:
        seg_classes.append(cls)
        pan[mask] = len(seg_classes)
    segments = []
    for seg_id, cls in enumerate(seg_classes, start=1):
        mask = pan == seg_id
        if mask.any():
            segments.append({"id": seg_id, "category_id": cls, "area": int(mask.sum()),
                             "bbox": _bbox(mask), "iscrowd": 0})
    return pan, segments


def prepare(root):
    p = ade20k_150_paths(root)
    require_download([p["dataset_dir"], p["image_root"], p["raw_sem_seg_root"]], DOWNLOAD_HINT)
    names = read_object_info(p["object_info"])
    instance_to_semantic = read_category_mapping(p["category_mapping"])
    thing_ids = set(instance_to_semantic.values())
    isthing = [i in thing_ids for i in range(NUM_CLASSES)]
    colors = deterministic_colors(NUM_CLASSES)
    categories = [{"id": i, "name": names[i], "isthing": int(isthing[i]), "color": colors[i]}
                  for i in range(NUM_CLASSES)]

    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(p["image_root"])
                   if f.endswith(".jpg"))
    for stem in stems:
        require_download([os.path.join(p["raw_sem_seg_root"], stem + ".png")], DOWNLOAD_HINT)

    # semantic labels
    convert_each([(os.path.join(p["raw_sem_seg_root"], s + ".png"),
                   os.path.join(p["sem_seg_root"], s + ".png")) for s in stems],
                 _semantic, "ADE20K-150 semantic PNGs")

    # panoptic and instance annotations, both from the instance PNGs
    if not (os.path.exists(p["panoptic_json"]) and os.path.exists(p["json_file"])):
        require_download([p["raw_instance_root"]], DOWNLOAD_HINT)
        images, pan_anns, ins_anns = [], [], []
        for image_id, stem in enumerate(tqdm.tqdm(stems, desc="ADE20K-150 panoptic"), start=1):
            instance_png = os.path.join(p["raw_instance_root"], stem + ".png")
            require_download([instance_png], DOWNLOAD_HINT)
            sem = read_label_image(os.path.join(p["sem_seg_root"], stem + ".png"))
            things = _instances(instance_png, instance_to_semantic)
            pan, segments = _panoptic(sem, things, isthing)
            save_label_image(id2rgb(pan).astype(np.uint8),
                             os.path.join(p["panoptic_root"], stem + ".png"))
            height, width = sem.shape
            images.append({"id": image_id, "file_name": stem + ".jpg",
                           "height": height, "width": width})
            pan_anns.append({"image_id": image_id, "file_name": stem + ".png",
                             "segments_info": segments})
            for cls, mask in things:
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                ins_anns.append({"id": len(ins_anns) + 1, "image_id": image_id,
                                 "category_id": cls, "segmentation": rle,
                                 "area": int(mask.sum()), "bbox": _bbox(mask), "iscrowd": 0})
        pan_categories = [{k: c[k] for k in ("id", "name", "isthing", "color")}
                          for c in categories]
        write_json_atomic({"images": images, "annotations": pan_anns,
                           "categories": pan_categories}, p["panoptic_json"])
        write_json_atomic({"images": images, "annotations": ins_anns,
                           "categories": [{"id": c["id"], "name": c["name"]}
                                          for c in categories if c["isthing"]]},
                          p["json_file"])
    if not os.path.exists(p["vocabulary"]):
        write_json_atomic({"dataset": "ade20k_150", "categories": categories}, p["vocabulary"])


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"ADE20K-150 ready under {os.path.join(args.root, 'ADEChallengeData2016')}")


if __name__ == "__main__":
    main()
