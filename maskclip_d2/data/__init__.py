"""Datasets of the paper's benchmarks. Importing this package registers them with Detectron2."""
from . import datasets  # noqa: F401
