"""The synthetic open-vocabulary world (``maskclip_d2/synthetic_world``): 14 classes (8 colour
things, 6 texture stuff), 4 of them novel, in COCO panoptic format.

Layout under the datasets root (written by ``tools/synthetic_world.py`` or
``maskclip_d2.synthetic_world.write_world``)::

    synthetic_world/categories.json          vocabulary (id, name, isthing, novel, color)
    synthetic_world/images/{train,val}/      images
    synthetic_world/panoptic/<split>/        panoptic PNGs, synthetic_world/panoptic_<split>.json
    synthetic_world/semantic/<split>/        semantic PNGs (contiguous ids, 255 void)
    synthetic_world/instances_<split>.json   instances JSON of the things

Registers, every one with the whole vocabulary (all 14 classes) as its class list:

* ``synthetic_world_train``: base classes annotated, novel-class segments void (training);
* ``synthetic_world_val_all``: every class annotated;
* ``synthetic_world_val_base`` / ``synthetic_world_val_novel``: the same images, only the base /
  only the novel classes annotated, every other segment void. Detectron2's evaluators then
  score each class split with the model choosing among ALL classes: a novel segment called by
  a base name is a miss of the novel class (and a false positive of the base class, where the
  evaluator counts those), a prediction on a void segment is not scored.

The metadata's ``novel_classes`` lists the novel class names.
"""
import json
import os

from .register_coco_panoptic import load_panoptic_json
from .utils import get_datasets_root, register_dataset, require_prepared, vocabulary_metadata

PREPARE_COMMAND = "python tools/synthetic_world.py --scale ci --output <dir> (or write_world(root))"
WORLD_DIR = "synthetic_world"
VOCABULARY_FILE = f"{WORLD_DIR}/categories.json"
# registered name -> (image folder, split of annotations)
_SPLITS = {
    "synthetic_world_train": ("train", "train"),
    "synthetic_world_val_all": ("val", "val_all"),
    "synthetic_world_val_base": ("val", "val_base"),
    "synthetic_world_val_novel": ("val", "val_novel"),
}


def synthetic_world_paths(root, image_folder, split):
    world = os.path.join(root, WORLD_DIR)
    return {
        "image_root": os.path.join(world, "images", image_folder),
        "panoptic_root": os.path.join(world, "panoptic", split),
        "panoptic_json": os.path.join(world, f"panoptic_{split}.json"),
        "sem_seg_root": os.path.join(world, "semantic", split),
        "json_file": os.path.join(world, f"instances_{split}.json"),
    }


def read_world_categories(root):
    """The vocabulary of the world written under ``root`` (its categories.json, which the
    generator writes with the world), else the generator's default vocabulary."""
    path = os.path.join(root, VOCABULARY_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["categories"]
    from ...synthetic_world.world import categories

    return categories()


def _load(name, root, paths):
    vocabulary_file = os.path.join(root, VOCABULARY_FILE)
    require_prepared(
        name,
        [vocabulary_file, paths["image_root"], paths["panoptic_json"], paths["panoptic_root"],
         paths["sem_seg_root"]],
        PREPARE_COMMAND,
    )
    return load_panoptic_json(
        paths["panoptic_json"], paths["image_root"], paths["panoptic_root"],
        paths["sem_seg_root"], read_world_categories(root),
    )


def register_all_synthetic_world(root=None):
    """Register the synthetic world's splits under ``root`` (default: ``get_datasets_root()``)."""
    root = get_datasets_root() if root is None else root
    categories = read_world_categories(root)
    for name, (image_folder, split) in _SPLITS.items():
        paths = synthetic_world_paths(root, image_folder, split)
        metadata = dict(paths, evaluator_type="coco_panoptic_seg", ignore_label=255,
                        label_divisor=1000)
        metadata.update(vocabulary_metadata(categories, panoptic=True))
        metadata["novel_classes"] = [c["name"] for c in categories if c.get("novel")]
        register_dataset(name, lambda n=name, p=paths: _load(n, root, p), metadata)


register_all_synthetic_world()
