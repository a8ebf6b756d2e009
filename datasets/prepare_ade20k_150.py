#!/usr/bin/env python
"""Prepare ADE20K-150 (ADEChallengeData2016) validation for maskclip-d2.

Reads the official download: images and semantic PNGs (ADEChallengeData2016.zip), the
instance PNGs (annotations_instance.tar, R = instance-class id, G = instance id), the class
list ``objectInfo150.csv`` (or ``objectInfo150.txt``) and the instance-to-semantic class map
``categoryMapping.txt`` of the instance-segmentation devkit.

First it checks both lists against the shipped vocabulary ``ade20k_150`` (Mask2Former's
``ADE20K_150_CATEGORIES``, whose names and thing flags the model uses): every official name
must name the shipped class of its id (one shipped synonym found, word for word, in the
official name: "windowpane;window" for "window "), and the classes of categoryMapping.txt
must be the shipped things. A mismatch stops the script with a ``ValueError`` before
anything is written. Then it writes, in ADEChallengeData2016/:

* ``annotations_detectron2/validation/*.png``: semantic labels, id - 1 (void 0 -> 255);
* ``ade20k_panoptic_val/*.png`` + ``ade20k_panoptic_val.json``: COCO panoptic format, stuff
  segments from the semantic labels, thing segments from the instance labels (on top);
* ``ade20k_instance_val.json``: COCO instance format, RLE masks of the 100 thing classes.

Re-runs skip outputs that are already complete.

    python datasets/prepare_ade20k_150.py [--root datasets]
"""
import csv
import os

import numpy as np
import pycocotools.mask as mask_util
import tqdm
from panopticapi.utils import id2rgb

from maskclip_d2.data.datasets.register_ade20k_150 import ade20k_150_paths
from maskclip_d2.utils import write_json_atomic
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

NUM_CLASSES = 150
DOWNLOAD_HINT = (
    "Download ADEChallengeData2016.zip and annotations_instance.tar from the MIT Scene Parsing "
    "benchmark and extract them into ADEChallengeData2016/; put objectInfo150.csv and "
    "categoryMapping.txt (instancesegmentation/ of the placeschallenge devkit) next to them"
)


def read_object_info(path):
    """{semantic id: official name} of ``objectInfo150.csv`` (commas) or ``.txt`` (tabs)."""
    if not os.path.exists(path):
        txt = os.path.splitext(path)[0] + ".txt"
        path = txt if os.path.exists(txt) else path
    require_download([path], DOWNLOAD_HINT)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t" if path.endswith(".txt") else ","))
    return path, {int(r["Idx"]): r["Name"] for r in rows}


def read_category_mapping(path):
    """``categoryMapping.txt`` -> {instance-class id: semantic id - 1}. (The official file
    lists a few instance ids twice, with the same semantic id and two full-ADE20K ids.)"""
    require_download([path], DOWNLOAD_HINT)
    mapping = {}
    with open(path) as f:
        for line in f.readlines()[1:]:  # header: Instacne100 SceneParse150 FullADE20K
            fields = line.split()
            if fields:
                mapping[int(fields[0])] = int(fields[1]) - 1
    if not mapping or not all(0 <= s < NUM_CLASSES for s in mapping.values()):
        raise ValueError(f"{path}: expected lines '<instance id> <semantic id 1..150> <ADE id>'")
    return mapping


def check_download_classes(object_info_path, category_mapping_path, categories):
    """Check the official class lists against the shipped ``categories``; returns the
    instance-class id -> semantic id - 1 map of categoryMapping.txt."""
    path, official = read_object_info(object_info_path)
    shipped = {c["id"] + 1: c["name"] for c in categories}  # objectInfo150 Idx = id + 1
    check_class_names(path, "ade20k_150", official, shipped, same=names_share_a_synonym)
    instance_to_semantic = read_category_mapping(category_mapping_path)
    things = set(instance_to_semantic.values())
    check_class_names(category_mapping_path, "ade20k_150 (thing flags)",
                      {c["id"] + 1: "thing" if c["id"] in things else "stuff" for c in categories},
                      {c["id"] + 1: "thing" if c["isthing"] else "stuff" for c in categories})
    return instance_to_semantic


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
    categories = get_vocabulary("ade20k_150")
    instance_to_semantic = check_download_classes(p["object_info"], p["category_mapping"],
                                                  categories)
    isthing = [bool(c["isthing"]) for c in categories]

    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(p["image_root"])
                   if f.endswith(".jpg"))
    need_instances = not (os.path.exists(p["panoptic_json"]) and os.path.exists(p["json_file"]))
    for stem in stems:
        require_download([os.path.join(p["raw_sem_seg_root"], stem + ".png")], DOWNLOAD_HINT)
        if need_instances:
            require_download([p["raw_instance_root"],
                              os.path.join(p["raw_instance_root"], stem + ".png")], DOWNLOAD_HINT)

    # semantic labels
    convert_each([(os.path.join(p["raw_sem_seg_root"], s + ".png"),
                   os.path.join(p["sem_seg_root"], s + ".png")) for s in stems],
                 _semantic, "ADE20K-150 semantic PNGs")

    # panoptic and instance annotations, both from the instance PNGs
    if need_instances:
        images, pan_anns, ins_anns = [], [], []
        for image_id, stem in enumerate(tqdm.tqdm(stems, desc="ADE20K-150 panoptic"), start=1):
            instance_png = os.path.join(p["raw_instance_root"], stem + ".png")
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


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"ADE20K-150 ready under {os.path.join(args.root, 'ADEChallengeData2016')}")


if __name__ == "__main__":
    main()
