"""Helpers of the ``datasets/prepare_*.py`` scripts: checks of the download (files present,
class lists equal to the shipped vocabularies), and outputs written so that a re-run skips
what is already complete (a file exists only once written)."""
import argparse
import os
import re

import numpy as np
import tqdm
from PIL import Image

from ...utils.file_io import atomic_write
from .utils import get_datasets_root

__all__ = [
    "argument_parser", "require_download", "save_label_image", "convert_each", "read_label_image",
    "check_class_names", "names_share_a_synonym",
]

_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def argument_parser(doc):
    """The command line every prepare script shares: ``--root`` (the datasets folder)."""
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


def names_share_a_synonym(official, shipped):
    """Whether an official class name and a shipped one name the same class: one synonym of
    ``shipped`` (split on ",") appears, word for word and in order, in ``official``.

    Official lists separate synonyms with ";" or ", ", and ADE20K's ``objectInfo150.csv``
    also writes every space as ";" ("pool;table;billiard;table;snooker;table"), so
    ``official`` is compared as a sequence of words: "windowpane;window" names the shipped
    "window " and "pool;table;billiard;table;snooker;table" the shipped "pool table, billiard
    table, snooker table". Case and surrounding spaces are ignored.
    """
    words = [w for w in re.split(r"[;,\s]+", official.lower()) if w]
    for synonym in shipped.lower().split(","):
        run = synonym.split()
        if run and any(words[i:i + len(run)] == run for i in range(len(words) - len(run) + 1)):
            return True
    return False


def check_class_names(path, vocabulary, official, shipped, same=None, complete=True):
    """Raise one ``ValueError`` when the class list of an official file is not the shipped
    vocabulary; call it before writing anything.

    Args:
        path (str): the official file the names come from (named in the message).
        vocabulary (str): the shipped preset (``maskclip_d2.vocabularies``).
        official (dict): id -> the name in ``path``, with ids as ``path`` writes them
            (they are what the message shows).
        shipped (dict): the same id -> the shipped name, for every class the prepared data
            uses.
        same (callable): ``same(official_name, shipped_name)``; default: equal strings.
        complete (bool): whether ``official`` must hold no id beyond ``shipped``'s.
    """
    same = same or (lambda a, b: a == b)
    wrong = [(i, official.get(i), name) for i, name in shipped.items()
             if i not in official or not same(official[i], name)]
    if complete:
        wrong += [(i, name, None) for i, name in official.items() if i not in shipped]
    if not wrong:
        return
    shown = "; ".join(
        f"id {i}: {'no such id' if got is None else repr(got)} in the download, "
        f"{'no such id' if want is None else repr(want)} shipped"
        for i, got, want in sorted(wrong, key=lambda w: w[0])[:5]
    )
    raise ValueError(
        f"{path} does not hold the classes of the shipped vocabulary '{vocabulary}' "
        f"({len(wrong)} mismatching id{'s' if len(wrong) > 1 else ''}; {shown}). The class "
        "names and ids ship with maskclip-d2 "
        "(maskclip_d2/vocabularies) and the prepared labels must use the same ids: "
        "replace this file with the one of the official release that datasets/README.md "
        "names (an edited or other-version file gives wrong labels), then run the script again."
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
