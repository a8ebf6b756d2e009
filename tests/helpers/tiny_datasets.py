"""Tiny datasets in the official raw formats, written by the tests into a temporary folder,
and what the dataset tests share (running a real ``datasets/prepare_*.py``, isolating the
Detectron2 catalogs). Images are 24 x 32 pixels. The class lists are the real ones (the
shipped vocabularies, written in each download's own format), so the prepare scripts' checks
pass and the tests see the names a user sees."""
import csv
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from panopticapi.utils import id2rgb
from PIL import Image

from maskclip_d2.vocabularies import PASCAL_CONTEXT_READABLE, get_vocabulary

REPO = Path(__file__).resolve().parents[2]
H, W = 24, 32


@pytest.fixture(autouse=True)
def isolated_catalogs():
    """Undo every (re)registration a test makes, so no test sees another test's tmp root."""
    datasets, metadata = dict(DatasetCatalog), dict(MetadataCatalog)
    yield
    DatasetCatalog.clear()
    DatasetCatalog.update(datasets)
    MetadataCatalog.clear()
    MetadataCatalog.update(metadata)


def run_prepare(script, root, *args):
    """Run ``datasets/<script>.py``'s ``main`` on ``root`` (in this process)."""
    spec = importlib.util.spec_from_file_location(script, REPO / "datasets" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--root", str(root), *args])


def save_image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


def save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.is_file()}


# ---- COCO panoptic -----------------------------------------------------------------------
# COCO's ids: 80 things in 1..90 (10 gaps), 53 stuff in 92..200.
COCO_THING_IDS = [c["id"] for c in COCO_CATEGORIES if c["isthing"]]
COCO_STUFF_IDS = [c["id"] for c in COCO_CATEGORIES if not c["isthing"]]


def coco_categories():
    """The ``categories`` of COCO's panoptic JSON: raw names ("wall-other-merged")."""
    return [{"id": c["id"], "name": c["name"], "supercategory": "s", "isthing": c["isthing"],
             "color": list(c["color"])} for c in COCO_CATEGORIES]


def coco_panoptic_image():
    """Segment-id map and segments: stuff 92 "banner" (top half), thing 1 "person" (bottom
    left), a crowd of thing 3 "car" (bottom right 8 x 8), the rest void."""
    pan = np.zeros((H, W), dtype=np.uint32)
    pan[:12] = 5
    pan[12:, :16] = 7
    pan[16:, 24:] = 9
    segments = [
        {"id": 5, "category_id": 92, "iscrowd": 0, "area": 12 * 32, "bbox": [0, 0, 32, 12]},
        {"id": 7, "category_id": 1, "iscrowd": 0, "area": 12 * 16, "bbox": [0, 12, 16, 12]},
        {"id": 9, "category_id": 3, "iscrowd": 1, "area": 64, "bbox": [24, 16, 8, 8]},
    ]
    return pan, segments


def write_coco_panoptic(root, splits=("val",)):
    coco = Path(root) / "coco"
    pan, segments = coco_panoptic_image()
    for split in splits:
        images, annotations = [], []
        for image_id in (139, 285):
            stem = f"{image_id:012d}"
            save_image(coco / f"{split}2017" / f"{stem}.jpg", seed=image_id)
            save_png(coco / f"panoptic_{split}2017" / f"{stem}.png", id2rgb(pan))
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": H, "width": W})
            annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                "segments_info": segments})
        (coco / "annotations").mkdir(parents=True, exist_ok=True)
        with open(coco / "annotations" / f"panoptic_{split}2017.json", "w") as f:
            json.dump({"images": images, "annotations": annotations,
                       "categories": coco_categories()}, f)


# ---- ADE20K-150 --------------------------------------------------------------------------
ADE_VAL_STEMS = ["ADE_val_00000001", "ADE_val_00000002"]
# A few names as the official objectInfo150.csv spells them, unlike the shipped ones.
ADE_OFFICIAL_SPELLINGS = {9: "windowpane;window", 38: "bathtub;bathing;tub;bath;tub",
                          90: "television;television;receiver;tv;tv;set"}


def ade_things():
    """The semantic ids (1..150) of the 100 shipped things, in categoryMapping.txt order:
    instance-class id i is ``ade_things()[i - 1]``."""
    return [c["id"] + 1 for c in get_vocabulary("ade20k_150") if c["isthing"]]


def ade_instance_class(semantic_id):
    """The instance-class id (R of the instance PNGs) of a thing's semantic id."""
    return ade_things().index(semantic_id) + 1


def ade_official_name(semantic_id):
    """A class name as objectInfo150.csv writes it: every comma and space a ";"."""
    if semantic_id in ADE_OFFICIAL_SPELLINGS:
        return ADE_OFFICIAL_SPELLINGS[semantic_id]
    name = get_vocabulary("ade20k_150")[semantic_id - 1]["name"]
    return ";".join(w for w in re.split(r"[,\s]+", name) if w)


def ade_raw_semantic():
    """Official semantic labels (0 void, 1..150) of the two images: 1 "wall", 3 "sky",
    2 "building" (stuff), 51 "refrigerator, icebox" and 58 "pillow" (things)."""
    first = np.zeros((H, W), dtype=np.uint8)
    first[:12] = 1  # wall
    first[12:, :16] = 3  # sky
    first[12:, 16:] = 51  # refrigerator, two instances below
    second = np.full((H, W), 2, dtype=np.uint8)
    second[8:16, 8:24] = 58  # pillow
    return [first, second]


def ade_raw_instances():
    """Official instance labels: R = instance-class id (1..100), G = instance id."""
    fridge, pillow = ade_instance_class(51), ade_instance_class(58)
    first = np.zeros((H, W, 3), dtype=np.uint8)
    first[12:, 16:24, :2] = (fridge, 1)
    first[12:, 24:, :2] = (fridge, 2)
    second = np.zeros((H, W, 3), dtype=np.uint8)
    second[8:16, 8:24, :2] = (pillow, 1)
    return [first, second]


def write_ade20k_150(root):
    ade = Path(root) / "ADEChallengeData2016"
    ade.mkdir(parents=True, exist_ok=True)
    things = ade_things()
    with open(ade / "objectInfo150.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Idx", "Ratio", "Train", "Val", "Stuff", "Name"])
        for i in range(1, 151):
            writer.writerow([i, 0.001, 10, 1, int(i not in things), ade_official_name(i)])
    with open(ade / "categoryMapping.txt", "w") as f:
        f.write("Instacne100\tSceneParse150\tFullADE20K\n")
        for i, semantic_id in enumerate(things, start=1):
            # the official file lists some instance ids twice (two full-ADE20K classes)
            for full_id in ((1000 + i, 2000 + i) if i == 5 else (1000 + i,)):
                f.write(f"{i}\t\t{semantic_id}\t\t{full_id}\n")
    for k, (stem, sem, ins) in enumerate(zip(ADE_VAL_STEMS, ade_raw_semantic(),
                                             ade_raw_instances())):
        save_image(ade / "images" / "validation" / f"{stem}.jpg", seed=k)
        save_png(ade / "annotations" / "validation" / f"{stem}.png", sem)
        save_png(ade / "annotations_instance" / "validation" / f"{stem}.png", ins)
    return ade


# ---- PASCAL Context ----------------------------------------------------------------------
def pascal_context_labels():
    """labels.txt's 459 names by id (shipped id + 1), VOC's spelt as one word ("pottedplant")."""
    as_in_file = {readable: raw for raw, readable in PASCAL_CONTEXT_READABLE.items()}
    return {c["id"] + 1: as_in_file.get(c["name"], c["name"])
            for c in get_vocabulary("pascal_context_459")}


PASCAL_VAL_STEMS = ["2008_000002", "2008_000005"]


def pascal_context_label_maps():
    """LabelMap of the two val images: 0 (unlabeled), 2 ("aeroplane"), 9 ("bag"), 3 ("air
    conditioner", outside the 59), 459 ("wool", the last label)."""
    first = np.zeros((H, W), dtype=np.uint16)
    first[:, :8], first[:, 8:16], first[:, 16:24] = 2, 9, 3
    second = np.full((H, W), 459, dtype=np.uint16)
    second[:12] = 9
    return [first, second]


def write_pascal_context(root):
    import scipy.io

    root = Path(root)
    voc = root / "VOCdevkit/VOC2010"
    (voc / "ImageSets/Main").mkdir(parents=True)
    # a train image has a JPEG but is not in val.txt
    for k, stem in enumerate(PASCAL_VAL_STEMS + ["2008_000008"]):
        save_image(voc / "JPEGImages" / f"{stem}.jpg", seed=k)
    (voc / "ImageSets/Main/val.txt").write_text("\n".join(PASCAL_VAL_STEMS) + "\n")
    pc = root / "pascal_context"
    (pc / "trainval").mkdir(parents=True)
    (pc / "labels.txt").write_text(
        "".join(f"{i}: {n}\n" for i, n in pascal_context_labels().items()))
    for stem, label in zip(PASCAL_VAL_STEMS, pascal_context_label_maps()):
        scipy.io.savemat(pc / "trainval" / f"{stem}.mat", {"LabelMap": label})
    return pc


# ---- COCO instances (48/17 split) --------------------------------------------------------
def coco_instance_categories():
    """The ``categories`` of COCO's instances JSON: the 80 things, COCO's ids and names."""
    return [{"id": c["id"], "name": c["name"], "supercategory": "s"}
            for c in COCO_CATEGORIES if c["isthing"]]


def box_annotation(ann_id, image_id, category_id, x, y, w, h):
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": [[float(v) for v in poly]], "area": float(w * h),
            "bbox": [x, y, w, h], "iscrowd": 0}


def write_coco_instances(root):
    """val: image 1 has a person (base) and a cat (target), image 2 only a fire hydrant (in
    neither group), image 3 a dog (target). train: image 11 has a person and a cat, image 12
    only a cat."""
    coco = Path(root) / "coco"
    cats = coco_instance_categories()
    cat_id = {c["name"]: c["id"] for c in cats}
    layouts = {
        "val": {1: [("person", 0, 0, 12, 12), ("cat", 16, 8, 12, 12)],
                2: [("fire hydrant", 0, 0, 8, 8)], 3: [("dog", 4, 4, 16, 16)]},
        "train": {11: [("person", 0, 0, 12, 12), ("cat", 16, 8, 12, 12)],
                  12: [("cat", 0, 0, 8, 8)]},
    }
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    for split, layout in layouts.items():
        images, anns = [], []
        for image_id, objects in layout.items():
            save_image(coco / f"{split}2017" / f"{image_id:012d}.jpg", seed=image_id)
            images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg",
                           "height": H, "width": W})
            for name, x, y, w, h in objects:
                anns.append(box_annotation(len(anns) + 1, image_id, cat_id[name], x, y, w, h))
        with open(coco / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return cat_id


# ---- LVIS v1 val -------------------------------------------------------------------------
def write_lvis(root):
    """lvis_v1_val.json with the 1203 official categories over two COCO images (one from
    val2017, one from train2017): image 1 has category 1 at the left and 2 at the right."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    root = Path(root)
    images = []
    for image_id, split in ((1, "val2017"), (2, "train2017")):
        name = f"{image_id:012d}.jpg"
        save_image(root / "coco" / split / name, seed=image_id)
        images.append({"id": image_id, "height": H, "width": W, "neg_category_ids": [3],
                       "not_exhaustive_category_ids": [],
                       "coco_url": f"http://images.cocodataset.org/{split}/{name}"})
    anns = [box_annotation(1, 1, 1, 0, 0, 12, 12), box_annotation(2, 1, 2, 16, 8, 12, 12),
            box_annotation(3, 2, 2, 4, 4, 16, 16)]
    cats = [dict(c, image_count=1, instance_count=1) for c in LVIS_CATEGORIES]
    (root / "lvis").mkdir(parents=True, exist_ok=True)
    with open(root / "lvis" / "lvis_v1_val.json", "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)


# ---- ADE20K full (847) -------------------------------------------------------------------
# Class values (k = objectnames[k - 1]) of shipped classes and one that is not shipped.
ADE_FULL_WALL, ADE_FULL_BUILDING, ADE_FULL_SKY, ADE_FULL_FLOOR = 2978, 312, 2420, 976
ADE_FULL_NOT_SHIPPED = 1
ADE_FULL_NUM_NAMES = 3200  # the release has 3688; the shipped ids go up to 3156
ADE_FULL_BIG = (520, 600)  # (H, W) of a validation image whose short side exceeds 512


def ade_full_objectnames():
    """``objectnames`` of index_ade20k.pkl: the shipped names at their class value - 1."""
    names = [f"filler object {k}" for k in range(1, ADE_FULL_NUM_NAMES + 1)]
    for c in get_vocabulary("ade20k_847"):
        names[c["id"] - 1] = c["name"]
    return names


def ade_full_class_maps():
    """Class maps (0 = unlabeled) of 1 training and 3 validation images. Validation 1 (24 x
    32): wall, building, a class outside the 847 and unlabeled, 8 columns each; validation 2:
    sky on top, unlabeled below; validation 3 (520 x 600, resized by the preparation): wall
    on top, floor below, sky on the right."""
    train = np.full((H, W), ADE_FULL_WALL)
    val1 = np.zeros((H, W), dtype=np.int64)
    val1[:, :8], val1[:, 8:16] = ADE_FULL_WALL, ADE_FULL_BUILDING
    val1[:, 16:24] = ADE_FULL_NOT_SHIPPED
    val2 = np.zeros((H, W), dtype=np.int64)
    val2[:12] = ADE_FULL_SKY
    big = np.full(ADE_FULL_BIG, ADE_FULL_WALL)
    big[260:] = ADE_FULL_FLOOR
    big[:, 300:] = ADE_FULL_SKY
    return [train, val1, val2, big]


def ade_full_big_image():
    """The RGB image of validation 3: smooth gradients (JPEG keeps them nearly exact)."""
    ys, xs = np.mgrid[:ADE_FULL_BIG[0], :ADE_FULL_BIG[1]]
    return np.stack([ys * 255 // ADE_FULL_BIG[0], xs * 255 // ADE_FULL_BIG[1],
                     np.full_like(ys, 128)], axis=-1).astype(np.uint8)


ADE_FULL_STEMS = ["ADE_train_00000000", "ADE_val_00000001", "ADE_val_00000002",
                  "ADE_val_00000003"]


def write_ade20k_full(root):
    import pickle

    base = Path(root) / "ADE20K_2021_17_01"
    folders, filenames = [], []
    for k, (stem, cls) in enumerate(zip(ADE_FULL_STEMS, ade_full_class_maps())):
        split = "training" if "_train_" in stem else "validation"
        folder = f"ADE20K_2021_17_01/images/ADE/{split}/urban/street"
        if cls.shape == (H, W):
            save_image(Path(root) / folder / f"{stem}.jpg", seed=k)
        else:
            Image.fromarray(ade_full_big_image()).save(Path(root) / folder / f"{stem}.jpg",
                                                       quality=100)
        seg = np.zeros((*cls.shape, 3), dtype=np.uint8)
        seg[..., 0], seg[..., 1] = cls // 256 * 10, cls % 256
        save_png(Path(root) / folder / f"{stem}_seg.png", seg)
        folders.append(folder)
        filenames.append(f"{stem}.jpg")
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": folders, "filename": filenames,
                     "objectnames": ade_full_objectnames()}, f)
    return base


# ---- COCO panoptic scenes for training (64 x 64) -----------------------------------------
SCENE_SIZE = 64
# (dataset category id, colour): two things (thing1, thing3) and two stuff classes (92, 93)
SCENE_CLASSES = {1: (220, 40, 40), 3: (40, 200, 60), 92: (60, 90, 230), 93: (200, 200, 40)}


def coco_scene(index, size=SCENE_SIZE):
    """Segment-id map, segments and RGB image of scene ``index``: stuff 92 on top, stuff 93
    below, a thing-1 and a thing-3 rectangle placed by ``index``; every segment is painted in
    its class colour plus noise, so a model can tell the classes apart. No void, no crowd."""
    half, q = size // 2, size // 4
    pan = np.full((size, size), 1, dtype=np.uint32)  # segment 1: stuff 92
    pan[half:] = 2  # segment 2: stuff 93
    shift = (index * q // 2) % q
    pan[q // 2 + shift:q // 2 + shift + q, 4:4 + q] = 3  # thing 1
    pan[half + 4:half + 4 + q, half - shift:half - shift + q + 4] = 4  # thing 3
    categories = {1: 92, 2: 93, 3: 1, 4: 3}
    rng = np.random.RandomState(index)
    image = rng.randint(-30, 31, (size, size, 3))
    segments = []
    for segment_id, category_id in categories.items():
        region = pan == segment_id
        image[region] += np.array(SCENE_CLASSES[category_id])
        ys, xs = np.nonzero(region)
        segments.append({"id": segment_id, "category_id": category_id, "iscrowd": 0,
                         "area": int(region.sum()),
                         "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]})
    return pan, segments, np.clip(image, 0, 255).astype(np.uint8)


def write_coco_panoptic_scenes(root, splits=("train", "val"), num_images=3):
    """A COCO panoptic download of ``num_images`` 64 x 64 scenes per split, with the official
    instances JSON of its things (RLE masks equal to the panoptic segments, as in COCO)."""
    import pycocotools.mask as mask_util

    coco = Path(root) / "coco"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    for split in splits:
        images, annotations, instances = [], [], []
        for k in range(num_images):
            image_id = 100 + k
            stem = f"{image_id:012d}"
            pan, segments, image = coco_scene(k)
            (coco / f"{split}2017").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(coco / f"{split}2017" / f"{stem}.jpg", quality=100)
            save_png(coco / f"panoptic_{split}2017" / f"{stem}.png", id2rgb(pan))
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": SCENE_SIZE,
                           "width": SCENE_SIZE})
            annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                "segments_info": segments})
            for s in segments:
                if s["category_id"] in COCO_THING_IDS:
                    rle = mask_util.encode(np.asfortranarray((pan == s["id"]).astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    instances.append({"id": len(instances) + 1, "image_id": image_id,
                                      "category_id": s["category_id"], "segmentation": rle,
                                      "area": s["area"], "bbox": s["bbox"], "iscrowd": 0})
        with open(coco / "annotations" / f"panoptic_{split}2017.json", "w") as f:
            json.dump({"images": images, "annotations": annotations,
                       "categories": coco_categories()}, f)
        with open(coco / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump({"images": images, "annotations": instances,
                       "categories": [c for c in coco_categories() if c["isthing"]]}, f)
