"""The synthetic world's datasets: deterministic scenes, real formats, base-only training
annotations, val splits restricted to base / novel classes, registration like every dataset."""
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

from maskclip_d2.data.datasets.register_synthetic_world import register_all_synthetic_world
from maskclip_d2.synthetic_world.world import CONCEPTS, render_scene, write_world
from helpers.tiny_datasets import isolated_catalogs  # noqa: F401  (autouse fixture)

NOVEL = {i for i, c in enumerate(CONCEPTS) if c.novel}


@pytest.fixture
def world(tmp_path):
    write_world(str(tmp_path), num_train=12, num_val=6, seed=3)
    register_all_synthetic_world(str(tmp_path))
    return tmp_path


def test_scenes_are_deterministic_and_every_pixel_has_one_segment():
    a = render_scene(np.random.RandomState(7))
    b = render_scene(np.random.RandomState(7))
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2])) and a[2] == b[2]
    image, segments, classes = a
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert set(np.unique(segments)) == set(range(len(classes)))
    assert not CONCEPTS[classes[0]].isthing  # the background is stuff


def test_worlds_of_different_seeds_share_no_scene(tmp_path):
    images = {}
    for seed in (0, 1):
        folder = write_world(str(tmp_path / f"seed{seed}"), num_train=3, num_val=3, seed=seed)
        images[seed] = [np.asarray(Image.open(f"{folder}/images/{split}/{k:06d}.jpg"))
                        for split in ("train", "val") for k in range(3)]
    assert not any(np.array_equal(a, b) for a in images[0] for b in images[1])


def test_128_px_worlds_keep_the_smallest_things_share_of_the_scene(tmp_path):
    folder = write_world(str(tmp_path), num_train=1, num_val=8, size=128, seed=0)
    with open(f"{folder}/panoptic_val_all.json") as f:
        panoptic = json.load(f)
    things = {c["id"] for c in panoptic["categories"] if c["isthing"]}
    areas = [s["area"] for a in panoptic["annotations"] for s in a["segments_info"] if s["category_id"] in things]
    assert panoptic["images"][0]["height"] == 128 and min(areas) >= 24 * 4


def test_splits_annotate_base_novel_or_all_classes(world):
    names = [c.name for c in CONCEPTS]
    seen = {}
    for split in ("train", "val_all", "val_base", "val_novel"):
        records = DatasetCatalog.get(f"synthetic_world_{split}")
        meta = MetadataCatalog.get(f"synthetic_world_{split}")
        assert meta.stuff_classes == names  # every split has the whole vocabulary
        assert meta.novel_classes == [c.name for c in CONCEPTS if c.novel]
        assert meta.evaluator_type == "coco_panoptic_seg"
        classes = set()
        for r in records:
            pan = rgb2id(np.asarray(Image.open(r["pan_seg_file_name"]).convert("RGB")))
            sem = np.asarray(Image.open(r["sem_seg_file_name"]))
            ids = {s["id"] for s in r["segments_info"]}
            assert set(np.unique(pan)) - {0} == ids  # unannotated segments are void (0)
            for s in r["segments_info"]:
                assert (sem[pan == s["id"]] == s["category_id"]).all()
                assert s["isthing"] == CONCEPTS[s["category_id"]].isthing
            assert ((pan == 0) == (sem == 255)).all()
            classes |= {s["category_id"] for s in r["segments_info"]}
        seen[split] = classes
    assert not seen["train"] & NOVEL and not seen["val_base"] & NOVEL
    assert seen["val_novel"] <= NOVEL and seen["val_novel"]
    assert seen["val_all"] == seen["val_base"] | seen["val_novel"]
    # the instances JSON holds the split's things only
    with open(MetadataCatalog.get("synthetic_world_val_novel").json_file) as f:
        instances = json.load(f)
    assert {a["category_id"] - 1 for a in instances["annotations"]} <= NOVEL


def test_an_existing_world_is_reused_or_refused(world):
    assert write_world(str(world), num_train=12, num_val=6, seed=3).endswith("synthetic_world")
    with pytest.raises(FileExistsError, match="other settings"):
        write_world(str(world), num_train=13, num_val=6, seed=3)


def test_unprepared_world_names_what_to_run(tmp_path):
    register_all_synthetic_world(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="categories.json does not exist.*synthetic_world.py"):
        DatasetCatalog.get("synthetic_world_val_all")
