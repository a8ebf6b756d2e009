"""Segmentations as files other tools read: one image's Detectron2 outputs written in the
formats of the COCO ecosystem, and read back.

For an image saved as ``stem`` in ``folder`` (each file only when its output was computed)::

    folder/categories.json          the vocabulary: [{"id": k, "name": ..., "isthing": 0/1}]
    folder/<stem>.panoptic.png      COCO panoptic PNG: segment id as RGB (panopticapi's id2rgb),
                                    0 = void
    folder/<stem>.panoptic.json     {"file_name", "image_id", "segments_info": [{"id",
                                    "category_id", "isthing", "score", "area", "iscrowd"[, "class"]}]}
    folder/<stem>.semantic.png      class index per pixel (the argmax of ``sem_seg``): uint8,
                                    uint16 when there are more than 255 classes;
                                    255 / 65535 = unlabeled
    folder/<stem>.instances.json    COCO results: [{"image_id", "category_id", "bbox" (XYWH),
                                    "score", "segmentation": RLE (pycocotools)}]

Category ids are the 0-based indices of the vocabulary, as in the model's outputs, and
``categories.json`` names them, so the files describe themselves. Every file is written whole
(to a temporary file, then linked into place) and never replaces an existing file; a
``categories.json`` already in the folder is kept when it lists the same vocabulary, and is
an error otherwise.
"""
import contextlib
import json
import os
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util
import torch
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Boxes, BoxMode, Instances
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image

from .utils.file_io import new_file_mode

__all__ = [
    "UNLABELED", "CATEGORIES_FILE", "mask_file_paths", "save_masks", "load_masks",
    "check_categories", "write_categories", "read_categories", "write_panoptic", "read_panoptic", "write_semantic",
    "read_semantic", "semantic_scores", "write_instances", "read_instances",
]

# The label of unlabeled pixels in a semantic PNG, by its dtype.
UNLABELED = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
CATEGORIES_FILE = "categories.json"
# Output key of the model -> the suffixes of its files.
_SUFFIXES = {
    "panoptic_seg": (".panoptic.png", ".panoptic.json"),
    "sem_seg": (".semantic.png",),
    "instances": (".instances.json",),
}


@contextlib.contextmanager
def _new_file(path: str):
    """Yields a temporary path beside ``path``; when the block completes, the file appears at
    ``path`` whole (a hard link of the finished file), or FileExistsError if something is
    already there. The temporary file is always removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, new_file_mode())  # mkstemp's file is private (0600); open()'s is not
        try:
            os.link(tmp, path)  # atomic, and refuses to replace
        except FileExistsError:
            raise FileExistsError(f"{path} exists: mask files never replace a file") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise FileExistsError(f"{path} exists: mask files never replace a file") from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_json(path: str, obj) -> None:
    with _new_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f)


def _write_png(path: str, array: np.ndarray) -> None:
    with _new_file(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def mask_file_paths(folder: str, stem: str, keys: Sequence[str] = tuple(_SUFFIXES)) -> List[str]:
    """The files ``save_masks`` writes for outputs ``keys`` (categories.json not included)."""
    return [os.path.join(folder, stem + s) for key in keys for s in _SUFFIXES[key]]


# ---- categories ------------------------------------------------------------------------------
def _categories(vocabulary: Sequence[str], is_thing: Sequence[bool]) -> List[Dict]:
    if len(vocabulary) != len(is_thing):
        raise ValueError(f"{len(is_thing)} thing flags for {len(vocabulary)} classes")
    return [{"id": k, "name": name, "isthing": int(bool(thing))}
            for k, (name, thing) in enumerate(zip(vocabulary, is_thing))]


def check_categories(path: str, vocabulary: Sequence[str], is_thing: Sequence[bool]) -> bool:
    """True if ``path`` exists and lists the vocabulary with these flags, False if it does
    not exist, ValueError if it lists others (use another folder): what ``write_categories``
    will find, checked before any work."""
    if not os.path.exists(path):
        return False
    if read_categories(path) != _categories(vocabulary, is_thing):
        raise ValueError(
            f"{path} lists another vocabulary: save masks of this vocabulary in another folder"
        )
    return True


def write_categories(path: str, vocabulary: Sequence[str], is_thing: Sequence[bool]) -> None:
    """``path``: the vocabulary with its thing flags. An existing file listing the same
    categories is kept; one listing others is a ValueError (use another folder)."""
    categories = _categories(vocabulary, is_thing)
    if check_categories(path, vocabulary, is_thing):
        return
    try:
        _write_json(path, {"categories": categories})
    except FileExistsError:  # written meanwhile (another process): must agree
        write_categories(path, vocabulary, is_thing)


def read_categories(path: str) -> List[Dict]:
    """The ``categories`` of a categories.json: [{"id", "name", "isthing"}], ids 0, 1, ..."""
    with open(path) as f:
        return json.load(f)["categories"]


# ---- panoptic ----------------------------------------------------------------------------
def write_panoptic(png_path: str, json_path: str, panoptic_seg, segments_info: Sequence[Dict],
                   image_id=None) -> None:
    """A COCO panoptic PNG of the segment ids (H, W) and the JSON of their segments."""
    ids = torch.as_tensor(panoptic_seg).cpu().numpy()
    if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) >= 256 ** 3:
        raise ValueError(f"panoptic_seg must be (H, W) ids in [0, 2^24), got shape {ids.shape}")
    segments = [
        {"id": int(s["id"]), "category_id": int(s["category_id"]), "isthing": bool(s["isthing"]),
         "score": float(s["score"]), "area": int(s["area"]), "iscrowd": 0,
         **({"class": s["class"]} if "class" in s else {})}
        for s in segments_info
    ]
    record = {"file_name": os.path.basename(png_path), "image_id": image_id, "segments_info": segments}
    _write_png(png_path, id2rgb(ids.astype(np.int64)).astype(np.uint8))
    _write_json(json_path, record)


def read_panoptic(png_path: str, json_path: str):
    """(segment ids (H, W) int32 tensor, segments_info) as the model's ``panoptic_seg``."""
    with Image.open(png_path) as image:
        ids = rgb2id(np.asarray(image.convert("RGB")).astype(np.uint32))
    with open(json_path) as f:
        segments = json.load(f)["segments_info"]
    for s in segments:
        s.pop("iscrowd", None)
    return torch.as_tensor(ids.astype(np.int32)), segments


# ---- semantic ----------------------------------------------------------------------------
def write_semantic(path: str, labels, num_classes: int) -> None:
    """A label PNG: ``labels`` (H, W) class indices, negative = unlabeled; uint8 for up to
    255 classes, else uint16 (up to 65535)."""
    labels = torch.as_tensor(labels).cpu().numpy().astype(np.int64)
    dtype = np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)
    if num_classes > 65535:
        raise ValueError(f"a semantic PNG holds at most 65535 classes, got {num_classes}")
    if labels.ndim != 2 or labels.max(initial=-1) >= num_classes:
        raise ValueError(f"labels must be (H, W) indices below {num_classes}, got shape {labels.shape}")
    _write_png(path, np.where(labels < 0, UNLABELED[dtype], labels).astype(dtype))


def read_semantic(path: str) -> np.ndarray:
    """(H, W) uint8 or uint16 class indices (255 / 65535: unlabeled)."""
    with Image.open(path) as image:
        if image.mode == "L":
            return np.asarray(image).copy()
        if image.mode in ("I", "I;16", "I;16B"):
            return np.asarray(image).astype(np.uint16)
        raise ValueError(f"{path}: not a semantic label PNG (mode {image.mode}, expected L or I;16)")


def semantic_scores(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(K, H, W) one-hot scores whose argmax is ``labels`` (unlabeled pixels: all zero): a
    label PNG as the model's ``sem_seg``, e.g. for Detectron2's SemSegEvaluator."""
    labels = torch.as_tensor(labels.astype(np.int64))
    valid = labels < num_classes
    scores = torch.zeros((num_classes, *labels.shape))
    scores.scatter_(0, torch.where(valid, labels, 0)[None], valid[None].float())
    return scores


# ---- instances ---------------------------------------------------------------------------
def write_instances(path: str, instances: Instances, image_id=None) -> None:
    """COCO results JSON of ``Instances`` (Detectron2's ``instances_to_coco_json``: RLE
    masks, XYWH boxes); the image's height and width go in each RLE's ``size``."""
    _write_json(path, instances_to_coco_json(instances.to("cpu"), image_id))


def read_instances(path: str, height: int, width: int) -> Instances:
    """``Instances`` as the model's (``pred_masks`` bool, ``pred_boxes``, ``scores``,
    ``pred_classes``) from a COCO results JSON of one image of size (height, width)."""
    with open(path) as f:
        results = json.load(f)
    masks = [mask_util.decode(r["segmentation"]).astype(bool) for r in results]
    for r, m in zip(results, masks):
        if m.shape != (height, width):
            raise ValueError(f"{path}: a mask of size {m.shape} in an image of {(height, width)}")
    instances = Instances((height, width))
    instances.pred_masks = torch.as_tensor(np.stack(masks)) if masks else \
        torch.zeros((0, height, width), dtype=torch.bool)
    boxes = np.asarray([r["bbox"] for r in results], dtype=np.float64).reshape(-1, 4)
    instances.pred_boxes = Boxes(torch.as_tensor(
        BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS), dtype=torch.float32))
    instances.scores = torch.tensor([r["score"] for r in results], dtype=torch.float32)
    instances.pred_classes = torch.tensor([r["category_id"] for r in results], dtype=torch.int64)
    return instances


# ---- one image -----------------------------------------------------------------------------
def save_masks(outputs: Dict, folder: str, stem: str, vocabulary: Sequence[str],
               is_thing: Sequence[bool], image_id=None) -> List[str]:
    """Writes the files of one image's outputs (the model's dict: any of ``panoptic_seg``,
    ``sem_seg`` (K, H, W) scores, ``instances``) and the folder's categories.json; returns
    the paths written. Nothing is written when one of the image's files exists already
    (FileExistsError naming it). ``image_id``: for the JSON files (default: ``stem``)."""
    keys = [k for k in _SUFFIXES if k in outputs]
    if not keys:
        raise ValueError(f"no output to save: expected one of {', '.join(_SUFFIXES)}")
    paths = mask_file_paths(folder, stem, keys)
    for path in paths:
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists: save the masks in another folder or remove it")
    image_id = stem if image_id is None else image_id
    write_categories(os.path.join(folder, CATEGORIES_FILE), vocabulary, is_thing)
    written = []
    if "panoptic_seg" in outputs:
        png, js = mask_file_paths(folder, stem, ["panoptic_seg"])
        write_panoptic(png, js, *outputs["panoptic_seg"], image_id=image_id)
        written += [png, js]
    if "sem_seg" in outputs:
        (png,) = mask_file_paths(folder, stem, ["sem_seg"])
        write_semantic(png, outputs["sem_seg"].argmax(0), len(vocabulary))
        written.append(png)
    if "instances" in outputs:
        (js,) = mask_file_paths(folder, stem, ["instances"])
        write_instances(js, outputs["instances"], image_id)
        written.append(js)
    return written


def load_masks(folder: str, stem: str, height: Optional[int] = None,
               width: Optional[int] = None) -> Dict:
    """The outputs ``save_masks`` wrote, in the model's format: ``panoptic_seg``, ``sem_seg``
    (one-hot scores, ``semantic_scores``) and ``instances``, each when its file exists.
    ``height`` / ``width`` are needed only for instances without a panoptic or semantic
    file."""
    categories = read_categories(os.path.join(folder, CATEGORIES_FILE))
    outputs = {}
    pan_png, pan_json = mask_file_paths(folder, stem, ["panoptic_seg"])
    if os.path.exists(pan_png):
        outputs["panoptic_seg"] = read_panoptic(pan_png, pan_json)
        height, width = outputs["panoptic_seg"][0].shape
    (sem_png,) = mask_file_paths(folder, stem, ["sem_seg"])
    if os.path.exists(sem_png):
        labels = read_semantic(sem_png)
        outputs["sem_seg"] = semantic_scores(labels, len(categories))
        height, width = labels.shape
    (inst_json,) = mask_file_paths(folder, stem, ["instances"])
    if os.path.exists(inst_json):
        if height is None or width is None:
            raise ValueError(f"{inst_json}: give height and width to read instances alone")
        outputs["instances"] = read_instances(inst_json, height, width)
    if not outputs:
        raise FileNotFoundError(f"no mask files of {stem!r} in {folder}")
    return outputs
