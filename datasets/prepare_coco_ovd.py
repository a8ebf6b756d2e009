#!/usr/bin/env python
"""Prepare the COCO 48 / 17 open-vocabulary split (OVR-CNN) for maskclip-d2.

Reads ``coco/annotations/instances_{train,val}2017.json`` and writes, in coco/annotations/,
``instances_train2017_ovd_base.json`` (train images with a base object, base annotations)
and ``instances_val2017_ovd_{base,target,all}.json`` (val images with an object of the 65
classes; annotations of the base, target or all 65 classes), plus the vocabulary
``coco/maskclip_categories_coco_ovd.json`` (names of the instances JSON, base / target).

Re-runs skip outputs that are already complete.

    python datasets/prepare_coco_ovd.py [--root datasets]
"""
import json
import os

import tqdm

from maskclip_d2.data.datasets.register_coco_ovd import (
    COCO_OVD_BASE,
    COCO_OVD_TARGET,
    VOCABULARY_FILE,
    coco_ovd_json,
)
from maskclip_d2.data.datasets.utils import (
    deterministic_colors,
    write_json_atomic,
)
from maskclip_d2.data.prepare_utils import argument_parser, require_download

DOWNLOAD_HINT = "Download annotations_trainval2017.zip from cocodataset.org and extract it into coco/"


def split_ids(categories):
    """{"base": ids, "target": ids} of the COCO categories named in the split."""
    by_name = {c["name"]: c["id"] for c in categories}
    missing = [n for n in COCO_OVD_BASE + COCO_OVD_TARGET if n not in by_name]
    if missing:
        raise ValueError(f"COCO categories {missing} of the 48/17 split are not in the JSON")
    return {"base": [by_name[n] for n in COCO_OVD_BASE],
            "target": [by_name[n] for n in COCO_OVD_TARGET]}


def subset(coco, keep_ids, image_ids):
    """The COCO JSON restricted to ``image_ids`` and the annotations of ``keep_ids``."""
    keep_ids = set(keep_ids)
    return {
        "info": coco.get("info", {}),
        "licenses": coco.get("licenses", []),
        "images": [img for img in coco["images"] if img["id"] in image_ids],
        "annotations": [a for a in coco["annotations"]
                        if a["category_id"] in keep_ids and a["image_id"] in image_ids],
        "categories": [c for c in coco["categories"] if c["id"] in keep_ids],
    }


def prepare(root):
    vocabulary, vocabulary_file = None, os.path.join(root, VOCABULARY_FILE)
    for split, suffixes in (("train", ("base",)), ("val", ("base", "target", "all"))):
        outputs = {s: coco_ovd_json(root, split, s) for s in suffixes}
        if all(os.path.exists(o) for o in [*outputs.values(), vocabulary_file]):
            continue
        source = os.path.join(root, f"coco/annotations/instances_{split}2017.json")
        require_download([os.path.join(root, "coco"), source], DOWNLOAD_HINT)
        with open(source) as f:
            coco = json.load(f)
        groups = split_ids(coco["categories"])
        groups["all"] = groups["base"] + groups["target"]
        if vocabulary is None:
            colors = deterministic_colors(len(groups["all"]))
            names = {c["id"]: c["name"] for c in coco["categories"]}
            vocabulary = [{"id": i, "name": names[i], "isthing": 1, "color": colors[k],
                           "split": "base" if i in groups["base"] else "target"}
                          for k, i in enumerate(sorted(groups["all"]))]
        # images: those with an object of the classes of the set (train) / of all 65 (val)
        image_group = "base" if split == "train" else "all"
        image_ids = {a["image_id"] for a in coco["annotations"]
                     if a["category_id"] in set(groups[image_group])}
        for suffix, output in tqdm.tqdm(outputs.items(), desc=f"COCO 48/17 {split}"):
            if not os.path.exists(output):
                write_json_atomic(subset(coco, groups[suffix], image_ids), output)
    if not os.path.exists(vocabulary_file):
        write_json_atomic({"dataset": "coco_ovd", "categories": vocabulary}, vocabulary_file)


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    prepare(args.root)
    print(f"COCO 48/17 split ready under {os.path.join(args.root, 'coco/annotations')}")


if __name__ == "__main__":
    main()
