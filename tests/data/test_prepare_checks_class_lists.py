"""Every prepare script checks the official download's class list against the shipped
vocabulary: a renamed class (or a changed thing flag) stops it with a ValueError naming the
file, the id and both names, before anything is written."""
import csv
import json
import pickle

import pytest

from helpers.tiny_datasets import (
    ade_instance_class,
    mtimes,
    run_prepare,
    write_ade20k_150,
    write_ade20k_full,
    write_coco_instances,
    write_coco_panoptic,
    write_lvis,
    write_pascal_context,
)


def edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def rename_category(categories, category_id, **fields):
    next(c for c in categories if c["id"] == category_id).update(fields)


def coco_panoptic(root):
    write_coco_panoptic(root, splits=("train", "val"))  # only val is wrong: train waits too
    edit_json(root / "coco/annotations/panoptic_val2017.json",
              lambda d: rename_category(d["categories"], 92, name="flag"))
    return "panoptic_val2017.json", ["id 92: 'flag' in the download, 'banner' shipped"]


def coco_ovd(root):
    write_coco_instances(root)
    edit_json(root / "coco/annotations/instances_val2017.json",
              lambda d: rename_category(d["categories"], 17, name="kitten"))
    return "instances_val2017.json", ["id 17: 'kitten' in the download, 'cat' shipped"]


def ade20k_150_names(root):
    path = write_ade20k_150(root) / "objectInfo150.csv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[9][-1] = "skylight"  # Idx 9, officially "windowpane;window"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return "objectInfo150.csv", ["id 9: 'skylight' in the download, 'window ' shipped"]


def ade20k_150_things(root):
    path = write_ade20k_150(root) / "categoryMapping.txt"
    pillow = f"{ade_instance_class(58)}\t\t58\t\t"
    text = path.read_text()
    assert pillow in text
    path.write_text(text.replace(pillow, f"{ade_instance_class(58)}\t\t60\t\t"))
    return "categoryMapping.txt", ["id 58: 'stuff' in the download, 'thing' shipped",
                                   "id 60: 'thing' in the download, 'stuff' shipped"]


def ade20k_full(root):
    base = write_ade20k_full(root)
    with open(base / "index_ade20k.pkl", "rb") as f:
        index = pickle.load(f)
    index["objectnames"][2978 - 1] = "television receiver"
    with open(base / "index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    return "index_ade20k.pkl", ["id 2978: 'television receiver' in the download, 'wall' shipped"]


def pascal_context(root):
    pc = write_pascal_context(root)
    text = (pc / "labels.txt").read_text()
    (pc / "labels.txt").write_text(text.replace("2: aeroplane\n", "2: airplane\n"))
    return "labels.txt", ["id 2: 'airplane' in the download, 'aeroplane' shipped"]


def lvis(root):
    write_lvis(root)
    edit_json(root / "lvis/lvis_v1_val.json",
              lambda d: rename_category(d["categories"], 1, synonyms=["spray_bottle"]))
    return "lvis_v1_val.json", [
        "id 1: 'spray bottle' in the download, 'aerosol can, spray can' shipped"]


CASES = {
    "prepare_coco_panoptic": coco_panoptic,
    "prepare_coco_ovd": coco_ovd,
    "prepare_ade20k_150 (names)": ade20k_150_names,
    "prepare_ade20k_150 (things)": ade20k_150_things,
    "prepare_ade20k_full": ade20k_full,
    "prepare_pascal_context": pascal_context,
    "prepare_lvis": lvis,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_changed_class_stops_the_script_before_it_writes(tmp_path, case):
    file_name, mismatches = CASES[case](tmp_path)
    before = mtimes(tmp_path)
    with pytest.raises(ValueError) as err:
        run_prepare(case.split()[0], tmp_path)
    message = str(err.value)
    assert file_name in message and "shipped vocabulary" in message
    for mismatch in mismatches:
        assert mismatch in message
    assert "datasets/README.md" in message  # what to do
    assert mtimes(tmp_path) == before  # nothing written, nothing changed


def test_the_message_shows_the_first_five_of_many_mismatches(tmp_path):
    pc = write_pascal_context(tmp_path)
    lines = (pc / "labels.txt").read_text().splitlines()
    (pc / "labels.txt").write_text("".join(f"{line}x\n" for line in lines))  # all 459 renamed
    with pytest.raises(ValueError) as err:
        run_prepare("prepare_pascal_context", tmp_path)
    message = str(err.value)
    assert "459 mismatching ids" in message
    assert "id 5: 'artilleryx' in the download, 'artillery' shipped" in message
    assert "id 6:" not in message
