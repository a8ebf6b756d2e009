"""Every benchmark's class list, as package data: names as the paper's evaluation used them,
thing / stuff flags, the dataset's own ids and colours. No file on disk is read but these.

A vocabulary is a list of categories in contiguous-id order::

    {"id": <id in the dataset's prepared annotations>, "name": "building, edifice",
     "isthing": 0 or 1, "color": [r, g, b]}

Sources (``source`` in each JSON file; names are facts, checked against the official
downloads by the ``datasets/prepare_*.py`` scripts, which fail on a mismatch):

* ``coco_panoptic`` (133, 80 things): Detectron2's ``COCO_CATEGORIES``, raw names
  ("wall-other-merged"), as the MaskCLIP authors feed them to CLIP;
* ``ade20k_150`` (150, 100 things): Mask2Former's ``ADE20K_150_CATEGORIES``, the authors' list;
* ``ade20k_847``: Mask2Former's ``ADE20K_SEM_SEG_FULL_CATEGORIES``;
* ``pascal_context_59`` / ``pascal_context_459``: the release's labels.txt names;
* ``lvis`` (1203): Detectron2's LVIS v1 categories, synonyms joined by ", ";
* ``coco_ovd_48_17`` (65 things: 48 base + 17 target, OVR-CNN's split), ``coco_ovd_base``,
  ``coco_ovd_target``.

``resolve_vocabulary`` turns a preset name or a list of names into (names, is_thing), the form
the model's ``set_vocabulary`` takes.
"""
import functools
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "VOCABULARY_PRESETS", "get_vocabulary", "resolve_vocabulary", "COCO_OVD_BASE",
    "COCO_OVD_TARGET", "PASCAL_CONTEXT_59", "lvis_name",
]

_HERE = os.path.dirname(os.path.abspath(__file__))

# The split of OVR-CNN (Zareian et al., CVPR 2021), by COCO category name.
COCO_OVD_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird",
    "horse", "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee",
    "skis", "kite", "surfboard", "bottle", "fork", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed", "toilet",
    "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book",
    "clock", "vase", "toothbrush",
)
COCO_OVD_TARGET = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)

# The PASCAL Context 59-class benchmark, by labels.txt name, in contiguous-id order.
PASCAL_CONTEXT_59 = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood",
)
# labels.txt spells some VOC classes as one word; CLIP reads the words.
PASCAL_CONTEXT_READABLE = {"pottedplant": "potted plant", "tvmonitor": "tv monitor"}


def _json(name: str) -> List[Dict]:
    with open(os.path.join(_HERE, f"{name}.json")) as f:
        return json.load(f)["categories"]


def _coco_panoptic() -> List[Dict]:
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [{"id": c["id"], "name": c["name"], "isthing": int(c["isthing"]), "color": list(c["color"])}
            for c in COCO_CATEGORIES]


def _coco_ovd(groups) -> List[Dict]:
    names = {"base": COCO_OVD_BASE, "target": COCO_OVD_TARGET}
    wanted = {n: g for g in groups for n in names[g]}
    return [dict(c, split=wanted[c["name"]]) for c in _coco_panoptic()
            if c["isthing"] and c["name"] in wanted]


def deterministic_colors(num_colors, seed=0):
    """``num_colors`` RGB colours ([r, g, b] lists of ints), the same on every run."""
    rng = np.random.RandomState(seed)
    return rng.randint(0, 256, size=(num_colors, 3)).tolist()


def lvis_name(category: Dict) -> str:
    """All synonyms of an LVIS category, readable: "aerosol can, spray can"."""
    return ", ".join(s.replace("_", " ") for s in category["synonyms"])


def _lvis() -> List[Dict]:
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    categories = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    colors = deterministic_colors(len(categories))
    return [{"id": c["id"], "name": lvis_name(c), "isthing": 1, "color": color}
            for c, color in zip(categories, colors)]


def _pascal_context_59() -> List[Dict]:
    by_name = {c["name"]: c for c in _json("pascal_context_459")}
    return [by_name[PASCAL_CONTEXT_READABLE.get(n, n)] for n in PASCAL_CONTEXT_59]


VOCABULARY_PRESETS = {
    "coco_panoptic": _coco_panoptic,
    "ade20k_150": functools.partial(_json, "ade20k_150"),
    "ade20k_847": functools.partial(_json, "ade20k_847"),
    "pascal_context_59": _pascal_context_59,
    "pascal_context_459": functools.partial(_json, "pascal_context_459"),
    "lvis": _lvis,
    "coco_ovd_48_17": functools.partial(_coco_ovd, ("base", "target")),
    "coco_ovd_base": functools.partial(_coco_ovd, ("base",)),
    "coco_ovd_target": functools.partial(_coco_ovd, ("target",)),
}


@functools.lru_cache(maxsize=None)
def _cached(name: str) -> Tuple[Dict, ...]:
    return tuple(VOCABULARY_PRESETS[name]())


def get_vocabulary(name: str) -> List[Dict]:
    """The categories of preset ``name`` (copies: changing them changes nothing here)."""
    if name not in VOCABULARY_PRESETS:
        raise KeyError(
            f"no vocabulary preset {name!r}; the presets are: {', '.join(VOCABULARY_PRESETS)}"
        )
    return [dict(c) for c in _cached(name)]


def resolve_vocabulary(
    vocabulary, is_thing: Optional[Sequence[bool]] = None
) -> Tuple[List[str], Optional[List[bool]]]:
    """(class names, thing flags) of a preset name, a one-element list holding a preset name
    (as ``MODEL.MASKCLIP.VOCABULARY: ["ade20k_150"]``), or a list of class names.

    A preset brings its own flags, unless ``is_thing`` is given; a list of names keeps
    ``is_thing`` as given (None: the caller's default)."""
    if isinstance(vocabulary, str):
        preset = vocabulary
    elif len(vocabulary) == 1 and vocabulary[0] in VOCABULARY_PRESETS:
        preset = vocabulary[0]
    else:
        return list(vocabulary), (None if is_thing is None else list(is_thing))
    categories = get_vocabulary(preset)
    flags = [bool(c["isthing"]) for c in categories] if is_thing is None else list(is_thing)
    return [c["name"] for c in categories], flags
