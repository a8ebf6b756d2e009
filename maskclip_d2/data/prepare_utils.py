"""Helpers of the ``datasets/prepare_*.py`` scripts: checks of the download, and outputs
written so that a re-run skips what is already complete (a file exists only once written)."""
import argparse
import os

import numpy as np
import tqdm
from PIL import Image

from ..utils.file_io import atomic_write

__all__ = [
    "argument_parser", "require_download", "save_label_image", "convert_each", "read_label_image",
]

_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def argument_parser(doc):
    """The command line every prepare script shares: ``--root`` (the datasets folder)."""
    from .datasets.utils import get_datasets_root

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--root", default=get_datasets_root(),
                        help="datasets root (default: $DETECTRON2_DATASETS or 'datasets')")
    return parser


def require_download(paths, what):
    """Raise one ``FileNotFoundError`` for the first of ``paths`` that is missing.

    Args:
        paths (list[str]): files or folders of the official download, outermost first.
        what (str): what to download / extract to get them (named in the message).
    """
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: the download is missing or incomplete. {what} "
                "(see datasets/README.md)."
            )


def save_label_image(array, path):
    """Save a label array atomically: (H, W) uint8 or (H, W, 3) uint8 -> PNG, uint16 -> TIFF."""
    with atomic_write(path) as tmp:
        Image.fromarray(array).save(tmp, format=_FORMATS[os.path.splitext(path)[1].lower()])


def read_label_image(path):
    """A label image as an integer array (H, W) or (H, W, 3)."""
    with Image.open(path) as img:
        return np.asarray(img)


def convert_each(jobs, convert, desc):
    """Run ``convert(*job)`` for every job whose output (``job[-1]``) does not exist yet.

    Args:
        jobs (list[tuple]): argument tuples; the last item is the output path.
        convert (callable): writes the output of one job.
        desc (str): label of the progress bar.

    Returns:
        int: number of outputs written (0 on a re-run over complete outputs).
    """
    todo = [job for job in jobs if not os.path.exists(job[-1])]
    for job in tqdm.tqdm(todo, desc=desc, disable=not todo):
        convert(*job)
    return len(todo)
