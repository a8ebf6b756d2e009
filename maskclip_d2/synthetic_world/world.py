"""The synthetic open-vocabulary world: concepts, a deterministic scene generator, and the
dataset it writes in Detectron2's real formats.

A scene is ``size`` x ``size`` pixels: one or two *stuff* regions (textures: "grass", "sand",
...) split by a wavy border, with one to three *things* on top (blobs of one colour: "red
blob", ...; their outline is random, so only the colour names them). Every pixel belongs to
exactly one segment. A tiny CLIP learns colours and textures in about a CPU-minute, shapes not
(measured), so concepts are colours and textures.

Base and novel classes follow the paper's open-vocabulary protocol: the segmentation training
split annotates BASE classes only (novel-class segments are left unlabeled: void in the
panoptic PNG, 255 in the semantic PNG, absent from the JSONs), while CLIP pre-training
(``clip_pretraining.py``) sees every concept in its captions, as web-scale CLIP does. The
validation splits annotate all classes (``val_all``), only the base classes (``val_base``) or
only the novel ones (``val_novel``); the other segments are void there. All splits share the
same vocabulary (every class), so a model always chooses among all of them.

Layout written by ``write_world(root)`` under ``root/synthetic_world`` (see
``maskclip_d2/data/datasets/register_synthetic_world.py``)::

    categories.json                      vocabulary file (id, name, isthing, color, novel)
    images/{train,val}/<id>.jpg          RGB scenes
    panoptic/<split>/<id>.png            COCO panoptic PNGs (void = 0)
    panoptic_<split>.json                COCO panoptic JSON
    semantic/<split>/<id>.png            contiguous class ids, 255 = void
    instances_<split>.json               COCO instances JSON of the things (RLE masks)

with ``<split>`` in train, val_all, val_base, val_novel.
"""
import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "Concept",
    "CONCEPTS",
    "SPLITS",
    "WORLD_DIR",
    "render_scene",
    "render_concept_image",
    "write_world",
]

WORLD_DIR = "synthetic_world"
# split -> (image folder, which classes are annotated)
SPLITS = {
    "train": ("train", "base"),
    "val_all": ("val", "all"),
    "val_base": ("val", "base"),
    "val_novel": ("val", "novel"),
}
# Written into categories.json; a world on disk with another version is regenerated.
FORMAT_VERSION = 2  # 2: the scenes of seed s come from seeds 2s (train) and 2s + 1 (val)


@dataclasses.dataclass(frozen=True)
class Concept:
    name: str
    isthing: bool
    novel: bool
    color: Tuple[int, int, int]  # the thing's colour, or the texture's mean colour
    texture: str = "flat"  # things: "flat"; stuff: see _paint_texture


# The vocabulary: 8 colour things and 6 texture stuff; 2 + 2 of them novel. Dataset ids are the
# 1-based positions in this list; contiguous ids the 0-based ones.
CONCEPTS: List[Concept] = [
    Concept("red blob", True, False, (220, 30, 30)),
    Concept("green blob", True, False, (40, 190, 40)),
    Concept("blue blob", True, False, (30, 60, 225)),
    Concept("yellow blob", True, False, (235, 215, 30)),
    Concept("pink blob", True, False, (250, 120, 200)),
    Concept("cyan blob", True, False, (30, 215, 220)),
    Concept("purple blob", True, True, (130, 40, 190)),
    Concept("orange blob", True, True, (245, 130, 20)),
    Concept("grass", False, False, (70, 130, 50), "strokes"),
    Concept("sand", False, False, (205, 185, 135), "speckle"),
    Concept("snow", False, False, (232, 236, 242), "smooth"),
    Concept("gravel", False, False, (115, 115, 115), "pebbles"),
    Concept("water", False, True, (50, 95, 160), "waves"),
    Concept("brick", False, True, (150, 65, 45), "bricks"),
]


def _paint_texture(concept: Concept, rng: np.random.RandomState, size: int) -> np.ndarray:
    """(size, size, 3) float image of a stuff texture, filling the whole square."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    base = np.array(concept.color, dtype=np.float64)
    kind = concept.texture
    if kind == "strokes":  # short vertical strokes of darker and lighter green
        cols = rng.normal(0, 1, size)[None, :]
        field = np.sin(yy / 3.0 + rng.uniform(0, 6.28, size)[None, :]) * 0.5 + cols
        shade = 25 * field
    elif kind == "speckle":  # fine grain
        shade = rng.normal(0, 14, (size, size))
    elif kind == "smooth":  # almost flat, a soft gradient
        shade = 6 * np.sin(xx / 20.0 + rng.uniform(0, 6.28)) + rng.normal(0, 3, (size, size))
    elif kind == "pebbles":  # blotches of 3-4 px
        coarse = rng.normal(0, 30, (size // 4 + 2, size // 4 + 2))
        shade = np.kron(coarse, np.ones((4, 4)))[:size, :size] + rng.normal(0, 6, (size, size))
    elif kind == "waves":  # horizontal waves
        phase = rng.uniform(0, 6.28)
        shade = 30 * np.sin(yy / 2.0 + 1.5 * np.sin(xx / 6.0 + phase))
    elif kind == "bricks":  # rows of bricks with light mortar
        row = (yy + rng.randint(0, 8)) // 8
        offset = (row % 2) * 8
        mortar = ((yy + rng.randint(0, 8)) % 8 == 0) | ((xx + offset) % 16 == 0)
        shade = np.where(mortar, 80.0, rng.normal(0, 8, (size, size)))
        image = base[None, None] + shade[..., None]
        image[mortar] = (200, 195, 185)
        return image
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return base[None, None] + shade[..., None]


def _blob(rng: np.random.RandomState, size: int, radius: Tuple[float, float]) -> np.ndarray:
    """A random blob (bool (size, size)): an ellipse with a wobbly outline, random rotation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.15 * size, 0.85 * size, 2)
    a, b = rng.uniform(*radius, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    theta = np.arctan2(v, u)
    wobble = 1 + 0.2 * np.sin(rng.randint(2, 5) * theta + rng.uniform(0, 6.28))
    return (u / a) ** 2 + (v / b) ** 2 <= wobble ** 2


def _paint_thing(concept: Concept, rng: np.random.RandomState, size: int) -> np.ndarray:
    color = np.array(concept.color, dtype=np.float64) + rng.uniform(-15, 15, 3)
    return color[None, None] + rng.normal(0, 6, (size, size, 1))


def render_scene(rng: np.random.RandomState, size: int = 64, min_thing_area: int = 24):
    """One random scene.

    Returns:
        image: (size, size, 3) uint8 RGB;
        segment_map: (size, size) int32, the segment index (0..S-1) of every pixel;
        classes: S contiguous class ids (indices into ``CONCEPTS``), one per segment.
    """
    things = [i for i, c in enumerate(CONCEPTS) if c.isthing]
    stuff = [i for i, c in enumerate(CONCEPTS) if not c.isthing]
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size, 3))
    segment_map = np.zeros((size, size), dtype=np.int32)
    classes = []

    # stuff: one region, or two split by a wavy line (horizontal or vertical)
    num_stuff = rng.randint(1, 3)
    stuff_classes = rng.choice(stuff, num_stuff, replace=False).tolist()
    region = np.zeros((size, size), dtype=bool)
    if num_stuff == 2:
        along, across = (xx, yy) if rng.rand() < 0.5 else (yy, xx)
        border = rng.uniform(0.3, 0.7) * size + 4 * np.sin(along / rng.uniform(5, 12) + rng.uniform(0, 6.28))
        region = across >= border
    for k, c in enumerate(stuff_classes):
        where = region if k == 1 else ~region
        image[where] = _paint_texture(CONCEPTS[c], rng, size)[where]
        segment_map[where] = k
        classes.append(c)

    # things on top, later ones in front; a blob that would leave any thing (itself included)
    # with fewer than min_thing_area visible pixels is not placed
    for c in rng.choice(things, rng.randint(1, 4), replace=True).tolist():
        blob = _blob(rng, size, (0.09 * size, 0.22 * size))
        candidate = np.where(blob, len(classes), segment_map)
        areas = np.bincount(candidate.ravel(), minlength=len(classes) + 1)
        if any(areas[s] < min_thing_area for s in range(num_stuff, len(classes) + 1)):
            continue
        image[blob] = _paint_thing(CONCEPTS[c], rng, size)[blob]
        segment_map = candidate
        classes.append(c)

    # a stuff region entirely covered by things is dropped; segments renumbered densely
    keep = [s for s in range(len(classes)) if (segment_map == s).any()]
    renumber = np.zeros(len(classes), dtype=np.int32)
    renumber[keep] = np.arange(len(keep), dtype=np.int32)
    segment_map = renumber[segment_map]
    classes = [classes[s] for s in keep]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), segment_map, classes


def render_concept_image(concept_index: int, rng: np.random.RandomState, size: int = 64,
                         background: Optional[int] = None):
    """An image that shows one concept: a large thing on the stuff texture ``background`` (a
    random one if None), or a stuff texture filling the frame (CLIP pre-training images for
    the caption ``CONCEPTS[i].name``)."""
    concept = CONCEPTS[concept_index]
    if not concept.isthing:
        return np.clip(np.rint(_paint_texture(concept, rng, size)), 0, 255).astype(np.uint8)
    if background is None:
        background = rng.choice([i for i, c in enumerate(CONCEPTS) if not c.isthing])
    image = _paint_texture(CONCEPTS[background], rng, size)
    blob = _blob(rng, size, (0.2 * size, 0.4 * size))
    image[blob] = _paint_thing(concept, rng, size)[blob]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def categories(vocabulary_offset: int = 0) -> List[Dict]:
    """The vocabulary file's categories (dataset id = position + 1). ``vocabulary_offset``
    rotates the names by that many places: a deliberately WRONG vocabulary, only for showing
    that the study's tests catch an off-by-one vocabulary."""
    names = [c.name for c in CONCEPTS]
    names = names[vocabulary_offset:] + names[:vocabulary_offset]
    return [{"id": i + 1, "name": names[i], "isthing": int(c.isthing), "novel": int(c.novel),
             "color": list(c.color)} for i, c in enumerate(CONCEPTS)]


def _bbox(mask: np.ndarray) -> List[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _id2rgb(ids: np.ndarray) -> np.ndarray:
    from panopticapi.utils import id2rgb

    return id2rgb(ids)


def _annotated(split_classes: str, concept: Concept) -> bool:
    return split_classes == "all" or (concept.novel == (split_classes == "novel"))


def write_world(
    root: str,
    num_train: int,
    num_val: int,
    size: int = 64,
    seed: int = 0,
    shuffle_train_labels: bool = False,
    vocabulary_offset: int = 0,
) -> str:
    """Writes the world's dataset under ``root/synthetic_world`` (layout in the module
    docstring) and returns that folder. Deterministic in ``seed``; different seeds give
    disjoint worlds (train scenes from ``RandomState(2 * seed)``, val from ``2 * seed + 1``). An existing world written
    with the same arguments is reused; another one is an error (delete it or use another
    root), so no data is replaced.

    ``shuffle_train_labels`` (every train segment gets a random class) and
    ``vocabulary_offset`` (names rotated) deliberately break the world; they exist to prove
    that the study's tests fail on a broken pipeline.
    """
    import pycocotools.mask as mask_util

    from ..utils.file_io import write_json_atomic

    folder = os.path.join(root, WORLD_DIR)
    settings = {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
                "shuffle_train_labels": shuffle_train_labels,
                "vocabulary_offset": vocabulary_offset, "version": FORMAT_VERSION}
    vocabulary_file = os.path.join(folder, "categories.json")
    if os.path.exists(vocabulary_file):
        with open(vocabulary_file) as f:
            existing = json.load(f).get("settings")
        if existing == settings:
            return folder
        raise FileExistsError(
            f"{folder} holds a synthetic world written with other settings ({existing}); "
            f"delete it or choose another datasets root to write {settings}"
        )

    cats = categories(vocabulary_offset)
    thing_cats = [c for c in cats if c["isthing"]]
    # seeds 2s and 2s + 1: the worlds of different seeds share no scene
    images_per_folder = {"train": (num_train, 2 * seed), "val": (num_val, 2 * seed + 1)}
    # the smallest visible thing keeps its share of the scene at every size (24 px at 64 px)
    min_thing_area = max(1, round(24 * (size / 64) ** 2))
    for image_folder, (count, split_seed) in images_per_folder.items():
        rng = np.random.RandomState(split_seed)
        scenes = [render_scene(rng, size, min_thing_area) for _ in range(count)]
        label_rng = np.random.RandomState(split_seed + 1000)
        os.makedirs(os.path.join(folder, "images", image_folder), exist_ok=True)
        for k, (image, _, _) in enumerate(scenes):
            Image.fromarray(image).save(
                os.path.join(folder, "images", image_folder, f"{k:06d}.jpg"), quality=95)
        for split, (split_folder, which) in SPLITS.items():
            if split_folder != image_folder:
                continue
            pan_dir = os.path.join(folder, "panoptic", split)
            sem_dir = os.path.join(folder, "semantic", split)
            os.makedirs(pan_dir, exist_ok=True)
            os.makedirs(sem_dir, exist_ok=True)
            images, annotations, instances = [], [], []
            for k, (_, segment_map, classes) in enumerate(scenes):
                name = f"{k:06d}.png"
                pan = np.zeros((size, size), dtype=np.uint32)
                sem = np.full((size, size), 255, dtype=np.uint8)
                segments = []
                for s, c in enumerate(classes):
                    if not _annotated(which, CONCEPTS[c]):
                        continue  # void
                    label = c
                    if shuffle_train_labels and split == "train":
                        label = int(label_rng.randint(len(CONCEPTS)))
                    mask = segment_map == s
                    pan[mask] = s + 1
                    sem[mask] = label
                    segments.append({"id": s + 1, "category_id": label + 1, "iscrowd": 0,
                                     "area": int(mask.sum()), "bbox": _bbox(mask)})
                    if CONCEPTS[label].isthing:
                        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                        rle["counts"] = rle["counts"].decode("ascii")
                        instances.append({"id": len(instances) + 1, "image_id": k,
                                          "category_id": label + 1, "segmentation": rle,
                                          "area": int(mask.sum()), "bbox": _bbox(mask),
                                          "iscrowd": 0})
                Image.fromarray(_id2rgb(pan)).save(os.path.join(pan_dir, name))
                Image.fromarray(sem).save(os.path.join(sem_dir, name))
                images.append({"id": k, "file_name": f"{k:06d}.jpg", "height": size,
                               "width": size})
                annotations.append({"image_id": k, "file_name": name, "segments_info": segments})
            write_json_atomic({"images": images, "annotations": annotations, "categories": cats},
                              os.path.join(folder, f"panoptic_{split}.json"))
            write_json_atomic({"images": images, "annotations": instances,
                               "categories": thing_cats},
                              os.path.join(folder, f"instances_{split}.json"))
    # written last: its presence means the world is complete
    write_json_atomic({"dataset": WORLD_DIR, "categories": cats, "settings": settings},
                      vocabulary_file)
    return folder


def novel_names(vocabulary: Optional[Sequence[Dict]] = None) -> List[str]:
    cats = vocabulary if vocabulary is not None else categories()
    return [c["name"] for c in cats if c["novel"]]
