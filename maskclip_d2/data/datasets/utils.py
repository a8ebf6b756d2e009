"""What every ``register_<dataset>.py`` shares: the dataset root, (re)registration, the error
for a dataset that was not prepared, and Detectron2 metadata built from a shipped vocabulary
(``maskclip_d2.vocabularies``: categories in contiguous-id order, each with the
dataset's ``id``, ``name``, ``isthing`` and ``color``).
"""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog


__all__ = [
    "get_datasets_root",
    "register_dataset",
    "require_prepared",
    "things_metadata",
    "vocabulary_metadata",
]


def get_datasets_root():
    """The folder holding all datasets: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def register_dataset(name, loader, metadata):
    """Register ``loader`` and ``metadata`` under ``name``, replacing an earlier registration.

    Replacing is how this package gives open-vocabulary names to the few datasets Detectron2
    already registers under the names Mask2Former uses (``coco_2017_train_panoptic``,
    ``ade20k_sem_seg_val``, ``lvis_v1_val``), and how a registration can be moved to another
    root (tests, notebooks).
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def require_prepared(dataset_name, paths, prepare_command):
    """Raise one ``FileNotFoundError`` naming the first missing path and the command to run.

    Args:
        dataset_name (str): the registered name, for the message.
        paths (list[str]): files or folders the loader reads, outermost first (the dataset's
            own folder, then the prepared outputs), so the message names the real cause.
        prepare_command (str): e.g. "python datasets/prepare_ade20k_150.py".
    """
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"Dataset '{dataset_name}' is not ready: {path} does not exist. Download the "
                f"dataset as datasets/README.md describes (root: $DETECTRON2_DATASETS, default "
                f"'datasets'), then run `{prepare_command}`."
            )


def things_metadata(categories):
    """Metadata of an instance dataset whose classes are ``categories`` (all things), in
    contiguous-id order: names, colours and the dataset-id -> contiguous-id map."""
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_colors": [list(c["color"]) for c in categories],
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


def vocabulary_metadata(categories, *, panoptic):
    """Detectron2 metadata for the class names of a vocabulary.

    Args:
        categories (list[dict]): a shipped vocabulary (``get_vocabulary``), in
            contiguous-id order.
        panoptic (bool): True for a dataset with things and stuff (Mask2Former's convention:
            ``thing_classes`` and ``stuff_classes`` both list every class so a contiguous id
            indexes either; ``thing_dataset_id_to_contiguous_id`` holds the things only and
            ``stuff_dataset_id_to_contiguous_id`` every class, so that the semantic
            evaluator works on panoptic datasets too). False for a semantic dataset, whose
            classes are all "stuff".

    Returns:
        dict: ``thing_*`` / ``stuff_*`` classes, colours and id maps.
    """
    names = [c["name"] for c in categories]
    colors = [list(c["color"]) for c in categories]
    stuff_map = {c["id"]: i for i, c in enumerate(categories)}
    meta = {
        "stuff_classes": names,
        "stuff_colors": colors,
        "stuff_dataset_id_to_contiguous_id": stuff_map,
    }
    if panoptic:
        meta.update(
            thing_classes=list(names),
            thing_colors=[list(c) for c in colors],
            thing_dataset_id_to_contiguous_id={
                c["id"]: i for i, c in enumerate(categories) if c["isthing"]
            },
        )
    return meta
