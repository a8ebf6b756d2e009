"""Your own dataset, with your own class names: one call registers it for training and
evaluation, in the formats Detectron2 reads.

    from maskclip_d2.data.datasets import register_panoptic_dataset
    register_panoptic_dataset(
        "my_panoptic_val", ["toy rabbit, real rabbit", "sky", "grass"], [True, False, False],
        image_root="my/images", panoptic_root="my/panoptic", panoptic_json="my/panoptic.json")

then ``DATASETS.TEST '("my_panoptic_val",)'`` in ``train_net.py``. A panoptic dataset is
evaluated on all three tasks, as the paper's: PQ (``COCOPanopticEvaluator``), mIoU
(``SemSegEvaluator``, against semantic PNGs) and mask AP of the things
(``PanopticThingsCOCOEvaluator``, against a COCO instances JSON). When ``sem_seg_root`` /
``instances_json`` are not given, both are derived once from the panoptic PNGs into a folder
of ``derived_root`` keyed to their source (``<json stem>-<hash of the JSON and the class
list>``): two splits sharing one panoptic folder each get their own, and an edited JSON or
class list is derived again. Written whole or not at all; never over the inputs.

Formats: COCO panoptic (a JSON with ``images``, ``annotations`` whose ``segments_info``
carry dataset ``category_id``\\ s, and ``categories``; PNGs whose RGB encodes segment ids,
``panopticapi.utils.id2rgb``), Detectron2 semantic PNGs (one uint8 class index per pixel, 255
void), COCO instances JSON.
"""
import hashlib
import json
import os
import shutil

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data.datasets import load_coco_json, load_sem_seg
from panopticapi.utils import rgb2id

from ...utils.file_io import write_json_atomic
from .prepare_utils import read_label_image, save_label_image
from .register_coco_panoptic import load_panoptic_json
from ...vocabularies import deterministic_colors
from .utils import (
    register_dataset,
    things_metadata,
    vocabulary_metadata,
)

__all__ = ["register_panoptic_dataset", "register_semantic_dataset", "register_instance_dataset"]

IGNORE_LABEL = 255


def _categories(class_names, is_thing, category_ids):
    """Vocabulary-file categories (contiguous order) of a user's class list."""
    names = list(class_names)
    if not names or len(set(n.lower() for n in names)) != len(names):
        raise ValueError(f"class_names must be distinct names, at least one: got {names}")
    flags = [True] * len(names) if is_thing is None else [bool(f) for f in is_thing]
    ids = list(range(len(names))) if category_ids is None else list(category_ids)
    if len(flags) != len(names) or len(ids) != len(names) or len(set(ids)) != len(ids):
        raise ValueError(
            f"{len(names)} class names need as many is_thing flags ({len(flags)} given) and "
            f"distinct category ids ({len(ids)} given)"
        )
    colors = deterministic_colors(len(names))
    return [{"id": i, "name": n, "isthing": int(t), "color": c}
            for i, n, t, c in zip(ids, names, flags, colors)]


def _json_category_ids(panoptic_json, num_classes):
    """The ids of a panoptic JSON's ``categories``, in id order (the class names' order)."""
    with open(panoptic_json) as f:
        categories = json.load(f).get("categories") or []
    if len(categories) != num_classes:
        raise ValueError(
            f"{panoptic_json} lists {len(categories)} categories for {num_classes} class names: "
            "give category_ids (the dataset id of each class name, in order)"
        )
    return sorted(c["id"] for c in categories)


def _require(paths):
    for what, path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} {path} does not exist")


def derive_semantic_and_instances(panoptic_json, panoptic_root, categories, sem_seg_root,
                                  instances_json):
    """Semantic PNGs (contiguous class per pixel, 255 void) and a COCO instances JSON of the
    things, from COCO-panoptic annotations; what exists already is kept. Crowd segments are
    instances with ``iscrowd`` 1, as in COCO."""
    if len(categories) > IGNORE_LABEL:
        raise ValueError(
            f"{len(categories)} classes do not fit 8-bit semantic PNGs (at most {IGNORE_LABEL}): "
            "give sem_seg_root with your own labels, or evaluate PQ and AP only"
        )
    contiguous = {c["id"]: i for i, c in enumerate(categories)}
    things = {c["id"] for c in categories if c["isthing"]}
    with open(panoptic_json) as f:
        info = json.load(f)
    need_instances = not os.path.exists(instances_json)
    instances = []
    for ann in info["annotations"]:
        sem_png = os.path.join(sem_seg_root, ann["file_name"])
        need_sem = not os.path.exists(sem_png)
        if not (need_sem or need_instances):
            continue
        pan = rgb2id(read_label_image(os.path.join(panoptic_root, ann["file_name"])).astype(np.uint32))
        sem = np.full(pan.shape, IGNORE_LABEL, dtype=np.uint8)
        for seg in ann["segments_info"]:
            if seg["category_id"] not in contiguous:
                raise ValueError(
                    f"{panoptic_json}: image {ann['image_id']} has a segment of category "
                    f"{seg['category_id']}, which is not among the category ids {sorted(contiguous)}"
                )
            mask = pan == seg["id"]
            sem[mask] = contiguous[seg["category_id"]]
            if seg["category_id"] in things and mask.any():
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                instances.append({
                    "id": len(instances) + 1, "image_id": ann["image_id"],
                    "category_id": seg["category_id"], "segmentation": rle,
                    "area": int(mask.sum()), "bbox": [float(v) for v in mask_util.toBbox(rle)],
                    "iscrowd": int(seg.get("iscrowd", 0)),
                })
        if need_sem:
            save_label_image(sem, sem_png)
    if need_instances:
        write_json_atomic({
            "images": info["images"], "annotations": instances,
            "categories": [{"id": c["id"], "name": c["name"]} for c in categories if c["isthing"]],
        }, instances_json)


def derived_folder(derived_root, panoptic_json, categories):
    """The folder of ``derived_root`` whose files are derived from ``panoptic_json`` with
    ``categories``: ``<json stem>-<12 hex digits>``, a SHA-256 of the JSON's bytes and of the
    class list (dataset id, name, thing or stuff of each class, in order). Any change to either
    names another folder, so derived files are never used with a source they do not match."""
    digest = hashlib.sha256()
    with open(panoptic_json, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps(
        [[c["id"], c["name"], int(c["isthing"])] for c in categories]).encode("utf-8"))
    stem = os.path.splitext(os.path.basename(panoptic_json))[0]
    return os.path.join(derived_root, f"{stem}-{digest.hexdigest()[:12]}")


def _derive_once(panoptic_json, panoptic_root, categories, folder):
    """``folder/semantic`` and ``folder/instances.json``, derived into a temporary folder that
    is renamed to ``folder`` once complete: ``folder`` exists only whole."""
    if os.path.isdir(folder):
        return
    tmp = f"{folder}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        derive_semantic_and_instances(panoptic_json, panoptic_root, categories,
                                      os.path.join(tmp, "semantic"), os.path.join(tmp, "instances.json"))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):  # another process finishing first is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def register_panoptic_dataset(
    name, class_names, is_thing, image_root, panoptic_root, panoptic_json,
    sem_seg_root=None, instances_json=None, category_ids=None, derived_root=None,
):
    """Register a COCO-format panoptic dataset with your class names.

    Args:
        name (str): the name to give it (``DATASETS.TRAIN`` / ``DATASETS.TEST``).
        class_names (list[str]): the vocabulary, one name per category ("a, b" = synonyms).
        is_thing (list[bool] | None): per class, thing or stuff; None: all things.
        image_root (str): the images, named as the JSON's ``images[].file_name``.
        panoptic_root (str): the panoptic PNGs, named as ``annotations[].file_name``.
        panoptic_json (str): the COCO panoptic JSON.
        sem_seg_root (str | None): semantic PNGs (contiguous ids, 255 void) for mIoU; None:
            derived (see ``derived_root``).
        instances_json (str | None): COCO instances JSON of the things, for mask AP; None:
            derived (see ``derived_root``).
        category_ids (list[int] | None): the dataset id of each class name; None: the ids of
            the JSON's ``categories`` in increasing order.
        derived_root (str | None): where derived files go, each source in its own folder
            ``<json stem>-<hash>`` (``derived_folder``); default ``<panoptic_root>_maskclip``
            beside the panoptic PNGs.
    """
    _require([("image folder", image_root), ("panoptic PNG folder", panoptic_root),
              ("panoptic JSON", panoptic_json)])
    if category_ids is None:
        category_ids = _json_category_ids(panoptic_json, len(class_names))
    categories = _categories(class_names, is_thing, category_ids)
    derived_root = derived_root or os.path.normpath(panoptic_root) + "_maskclip"
    if sem_seg_root is None or instances_json is None:
        folder = derived_folder(derived_root, panoptic_json, categories)
        _derive_once(panoptic_json, panoptic_root, categories, folder)
        sem_seg_root = sem_seg_root or os.path.join(folder, "semantic")
        instances_json = instances_json or os.path.join(folder, "instances.json")
    _require([("semantic PNG folder", sem_seg_root), ("instances JSON", instances_json)])

    def load():
        with open(panoptic_json) as f:
            images = {img["id"]: img["file_name"] for img in json.load(f)["images"]}
        records = load_panoptic_json(panoptic_json, image_root, panoptic_root, sem_seg_root, categories)
        for r in records:  # the image's own file name, whatever its extension
            r["file_name"] = os.path.join(image_root, images[r["image_id"]])
        return records

    metadata = dict(
        vocabulary_metadata(categories, panoptic=True),
        image_root=image_root, panoptic_root=panoptic_root, panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root, json_file=instances_json,
        evaluator_type="coco_panoptic_seg", ignore_label=IGNORE_LABEL, label_divisor=1000,
    )
    register_dataset(name, load, metadata)


def register_semantic_dataset(name, class_names, image_root, sem_seg_root, image_ext="jpg",
                              label_ext="png", ignore_label=IGNORE_LABEL):
    """Register a semantic dataset: images and label PNGs of the same stem, each pixel the
    index of its class in ``class_names`` (``ignore_label`` = void). Evaluated with mIoU."""
    _require([("image folder", image_root), ("semantic PNG folder", sem_seg_root)])
    categories = _categories(class_names, [False] * len(class_names), None)
    register_dataset(
        name,
        lambda: load_sem_seg(sem_seg_root, image_root, gt_ext=label_ext, image_ext=image_ext),
        dict(vocabulary_metadata(categories, panoptic=False), image_root=image_root,
             sem_seg_root=sem_seg_root, evaluator_type="sem_seg", ignore_label=ignore_label),
    )


def register_instance_dataset(name, class_names, image_root, json_file, category_ids=None):
    """Register a COCO-format instance dataset (masks as polygons or RLE) with your class
    names, one per category of ``json_file`` (in increasing id order, or ``category_ids``).
    Evaluated with mask AP."""
    _require([("image folder", image_root), ("instances JSON", json_file)])
    if category_ids is None:
        category_ids = _json_category_ids(json_file, len(class_names))
    categories = _categories(class_names, None, category_ids)
    contiguous = {c["id"]: i for i, c in enumerate(categories)}

    def load():
        records = load_coco_json(json_file, image_root)
        for r in records:
            for a in r.get("annotations", []):
                a["category_id"] = contiguous[a["category_id"]]
        return records

    register_dataset(
        name, load,
        dict(things_metadata(categories), image_root=image_root, json_file=json_file,
             evaluator_type="coco"),
    )
