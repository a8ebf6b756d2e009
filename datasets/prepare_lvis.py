#!/usr/bin/env python
"""Check the LVIS v1 val download for maskclip-d2 (nothing needs converting).

LVIS v1 val is ``lvis/lvis_v1_val.json`` over COCO 2017 images (from both train2017 and
val2017, as each image's ``coco_url`` says). This script checks that the JSON's categories
are the shipped vocabulary ``lvis`` (the same 1203 ids, and the same synonyms, read as
"aerosol can, spray can"), and that every image it lists is on disk.

    python datasets/prepare_lvis.py [--root datasets]
"""
import json
import os

import tqdm

from maskclip_d2.data.datasets.prepare_utils import argument_parser, check_class_names, require_download
from maskclip_d2.vocabularies import get_vocabulary, lvis_name

DOWNLOAD_HINT = (
    "Download lvis_v1_val.json.zip from lvisdataset.org into lvis/, and the COCO 2017 "
    "train2017.zip and val2017.zip images into coco/"
)


def check(root):
    json_file = os.path.join(root, "lvis/lvis_v1_val.json")
    require_download([os.path.join(root, "lvis"), json_file, os.path.join(root, "coco")],
                     DOWNLOAD_HINT)
    with open(json_file) as f:
        lvis = json.load(f)
    check_class_names(json_file, "lvis", {c["id"]: lvis_name(c) for c in lvis["categories"]},
                      {c["id"]: c["name"] for c in get_vocabulary("lvis")})
    for img in tqdm.tqdm(lvis["images"], desc="LVIS v1 val images"):
        split_folder, file_name = img["coco_url"].split("/")[-2:]
        require_download([os.path.join(root, "coco", split_folder, file_name)], DOWNLOAD_HINT)
    return len(lvis["images"])


def main(argv=None):
    parser = argument_parser(__doc__)
    args = parser.parse_args(argv)
    num_images = check(args.root)
    print(f"LVIS v1 val ready: {num_images} images under {os.path.join(args.root, 'coco')}")


if __name__ == "__main__":
    main()
