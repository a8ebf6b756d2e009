"""Shared fixtures for the acceptance tests of the installed detectron2.

Datasets are generated in `tmp_path` in their real on-disk formats and registered in the real
`DatasetCatalog` / `MetadataCatalog` under unique names, removed again at teardown.
"""
import random
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def register_dataset():
    """`register_dataset(prefix, register_fn)` -> unique name.

    `register_fn(name)` registers the dataset (DatasetCatalog + MetadataCatalog) under `name`;
    both entries are removed at teardown, whether or not the test passed."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []

    def _register(prefix, register_fn):
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        names.append(name)
        register_fn(name)
        assert name in DatasetCatalog.list()
        return name

    yield _register
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def write_rgb(path, array):
    """Save an HxWx3 uint8 array as an RGB image (format from the suffix: .png / .jpg)."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)
    return str(path)


def write_label_png(path, labels):
    """Save an HxW uint8 label map as a single-channel ('L') PNG, lossless."""
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def helpers():
    """Image writers, as a fixture (this directory is not a package)."""
    return SimpleNamespace(write_rgb=write_rgb, write_label_png=write_label_png)
