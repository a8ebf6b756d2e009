"""Tiny datasets in the official raw formats, written by the tests into a temporary folder,
and what the dataset tests share (running a real ``datasets/prepare_*.py``, isolating the
Detectron2 catalogs). Images are 24 x 32 pixels."""
import csv
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import id2rgb
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
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
# 80 things with ids 1..90 minus 10 gaps (as in COCO), 53 stuff with ids 92..144.
COCO_THING_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
COCO_STUFF_IDS = list(range(92, 145))


def coco_categories():
    cats = [{"id": i, "name": f"thing{i}", "supercategory": "x", "isthing": 1,
             "color": [i, 0, 0]} for i in COCO_THING_IDS]
    # Raw COCO stuff names carry suffixes: "wall-other-merged", "door-stuff", "floor-wood".
    suffixes = ["-other-merged", "-stuff", "-merged", "-wood"]
    cats += [{"id": i, "name": f"stuff{i}{suffixes[i % 4]}", "supercategory": "y", "isthing": 0,
              "color": [0, i, 0]} for i in COCO_STUFF_IDS]
    return cats


def coco_panoptic_image():
    """Segment-id map and segments: stuff 92 (top half), thing 1 (bottom left), a crowd of
    thing 3 (bottom right 8 x 8), the rest void."""
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
# Things: the semantic ids 51..150 (instance-class id i -> semantic id 50 + i).
ADE_VAL_STEMS = ["ADE_val_00000001", "ADE_val_00000002"]


def ade_raw_semantic():
    """Official semantic labels (0 void, 1..150) of the two images."""
    first = np.zeros((H, W), dtype=np.uint8)
    first[:12] = 1  # wall-like stuff
    first[12:, :16] = 3  # stuff
    first[12:, 16:] = 51  # thing class, two instances below
    second = np.full((H, W), 2, dtype=np.uint8)
    second[8:16, 8:24] = 60
    return [first, second]


def ade_raw_instances():
    """Official instance labels: R = instance-class id (1..100), G = instance id."""
    first = np.zeros((H, W, 3), dtype=np.uint8)
    first[12:, 16:24, :2] = (1, 1)  # semantic 51, instance 1
    first[12:, 24:, :2] = (1, 2)  # semantic 51, instance 2
    second = np.zeros((H, W, 3), dtype=np.uint8)
    second[8:16, 8:24, :2] = (10, 1)  # semantic 60
    return [first, second]


def write_ade20k_150(root):
    ade = Path(root) / "ADEChallengeData2016"
    ade.mkdir(parents=True, exist_ok=True)
    with open(ade / "objectInfo150.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Idx", "Ratio", "Train", "Val", "Name"])
        for i in range(1, 151):
            name = f"class{i};synonym{i}" if i % 2 else f"class{i}"
            writer.writerow([i, 0.001, 10, 1, name])
    with open(ade / "categoryMapping.txt", "w") as f:
        f.write("Instacne100\tSceneParse150\tFullADE20K\n")
        for i in range(1, 101):
            f.write(f"{i}\t\t{50 + i}\t\t{1000 + i}\n")
    for k, (stem, sem, ins) in enumerate(zip(ADE_VAL_STEMS, ade_raw_semantic(),
                                             ade_raw_instances())):
        save_image(ade / "images" / "validation" / f"{stem}.jpg", seed=k)
        save_png(ade / "annotations" / "validation" / f"{stem}.png", sem)
        save_png(ade / "annotations_instance" / "validation" / f"{stem}.png", ins)
    return ade


# ---- PASCAL Context ----------------------------------------------------------------------
def pascal_context_labels():
    """459 labels.txt names: the 59 benchmark names at ids 2, 9, 16, ... and fillers."""
    from maskclip_d2.data.datasets.register_pascal_context import PASCAL_CONTEXT_59

    names = {i: f"label{i}" for i in range(1, 460)}
    for k, name in enumerate(PASCAL_CONTEXT_59):
        names[2 + 7 * k] = name
    return names


PASCAL_VAL_STEMS = ["2008_000002", "2008_000005"]


def pascal_context_label_maps():
    """LabelMap of the two val images: 0 (unlabeled), 2 ("aeroplane"), 9 ("bag"), 3 (a
    class outside the 59), 459 (the last label)."""
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
    """80 categories with COCO's ids: the 65 names of the split and 15 fillers."""
    from maskclip_d2.data.datasets.register_coco_ovd import COCO_OVD_BASE, COCO_OVD_TARGET

    names = list(COCO_OVD_BASE + COCO_OVD_TARGET) + [f"other{i}" for i in range(15)]
    return [{"id": i, "name": n, "supercategory": "s"} for i, n in zip(COCO_THING_IDS, names)]


def box_annotation(ann_id, image_id, category_id, x, y, w, h):
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id,
            "segmentation": [[float(v) for v in poly]], "area": float(w * h),
            "bbox": [x, y, w, h], "iscrowd": 0}


def write_coco_instances(root):
    """val: image 1 has a person (base) and a cat (target), image 2 only a filler class,
    image 3 a dog (target). train: image 11 has a person and a cat, image 12 only a cat."""
    coco = Path(root) / "coco"
    cats = coco_instance_categories()
    cat_id = {c["name"]: c["id"] for c in cats}
    layouts = {
        "val": {1: [("person", 0, 0, 12, 12), ("cat", 16, 8, 12, 12)],
                2: [("other0", 0, 0, 8, 8)], 3: [("dog", 4, 4, 16, 16)]},
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
def ade_full_class_maps():
    """Class maps (0 = unlabeled) of 2 training and 2 validation images over 850 classes:
    classes 848..850 appear only in training, so 847 are in both splits; class 5 covers most
    training pixels, so it comes first."""
    pixels = H * W  # 768
    train1 = np.arange(1, pixels + 1)
    train2 = np.full(pixels, 5)
    train2[:82] = np.arange(769, 851)
    val1 = np.arange(1, pixels + 1)
    val2 = np.zeros(pixels, dtype=np.int64)
    val2[:79] = np.arange(769, 848)
    return [m.reshape(H, W) for m in (train1, train2, val1, val2)]


def write_ade20k_full(root):
    import pickle

    base = Path(root) / "ADE20K_2021_17_01"
    folders, filenames = [], []
    splits = ["training", "training", "validation", "validation"]
    for k, (split, cls) in enumerate(zip(splits, ade_full_class_maps())):
        folder = f"ADE20K_2021_17_01/images/ADE/{split}/urban/street"
        stem = f"ADE_{'train' if split == 'training' else 'frame'}_{k:08d}"
        save_image(Path(root) / folder / f"{stem}.jpg", seed=k)
        seg = np.zeros((H, W, 3), dtype=np.uint8)
        seg[..., 0], seg[..., 1] = cls // 256 * 10, cls % 256
        save_png(Path(root) / folder / f"{stem}_seg.png", seg)
        folders.append(folder)
        filenames.append(f"{stem}.jpg")
    names = [f"object{k}, synonym{k}" for k in range(1, 851)]
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump({"folder": folders, "filename": filenames, "objectnames": names}, f)
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
