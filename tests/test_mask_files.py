"""Mask files (maskclip_d2.mask_files): what the Predictor returns, written in the COCO
formats and read back with panopticapi / pycocotools, is the same segmentation; a folder of
them scores the same PQ / mIoU / AP with Detectron2's evaluators as the outputs themselves."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import skimage.data
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from panopticapi.utils import rgb2id
from PIL import Image

from maskclip_d2 import Predictor
from maskclip_d2.vocabularies import get_vocabulary
from maskclip_d2.evaluation import build_evaluator
from maskclip_d2.mask_files import (
    CATEGORIES_FILE, load_masks, read_semantic, save_masks, write_semantic,
)
from maskclip_d2.modeling.postprocessing import (
    ImageMasks, instance_inference, panoptic_inference, semantic_inference,
)
from helpers.photos import TINY
from helpers.tiny_datasets import isolated_catalogs, run_prepare, write_ade20k_150  # noqa: F401

CLASSES = ["person, astronaut", "cat", "coffee cup", "sky", "grass"]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)  # the tiny model's random weights
    return Predictor(TINY)


@pytest.fixture(scope="module")
def outputs(predictor):
    """The tiny random model's three outputs on a photograph, with zero object-mask
    and overlap threshold, so that the random model keeps panoptic segments."""
    cached = predictor.model_outputs(skimage.data.coffee()[::4, ::4], vocabulary=CLASSES,
                                     stuff=["sky", "grass"])
    out = predictor.postprocess(cached, object_mask_threshold=0.0, overlap_threshold=0.0)
    assert len(out["panoptic_seg"][1]) > 0 and len(out["instances"]) > 0
    return out


def test_files_read_back_equal_the_predictor_outputs(predictor, outputs, tmp_path):
    written = predictor.save_masks(outputs, str(tmp_path), "coffee", image_id=7)
    names = sorted(os.path.basename(p) for p in written)
    assert names == ["coffee.instances.json", "coffee.panoptic.json", "coffee.panoptic.png",
                     "coffee.semantic.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(names + [CATEGORIES_FILE])  # no temporary left

    # panoptic: panopticapi's rgb2id of the PNG is the segment-id map; the JSON its segments
    seg, info = outputs["panoptic_seg"]
    with Image.open(tmp_path / "coffee.panoptic.png") as png:
        assert png.mode == "RGB"
        ids = rgb2id(np.asarray(png).astype(np.uint32))
    assert np.array_equal(ids, seg.numpy())
    record = json.loads((tmp_path / "coffee.panoptic.json").read_text())
    assert record["file_name"] == "coffee.panoptic.png" and record["image_id"] == 7
    assert [{k: v for k, v in s.items() if k != "iscrowd"} for s in record["segments_info"]] == info
    # semantic: the argmax of sem_seg, uint8 for 5 classes
    labels = read_semantic(str(tmp_path / "coffee.semantic.png"))
    assert labels.dtype == np.uint8
    assert np.array_equal(labels, outputs["sem_seg"].argmax(0).numpy())
    # instances: pycocotools decodes the RLE masks; classes, scores and boxes as predicted
    inst = outputs["instances"]
    results = json.loads((tmp_path / "coffee.instances.json").read_text())
    assert [r["image_id"] for r in results] == [7] * len(inst)
    decoded = np.stack([mask_util.decode(r["segmentation"]) for r in results]).astype(bool)
    assert np.array_equal(decoded, inst.pred_masks.numpy())
    assert [r["category_id"] for r in results] == inst.pred_classes.tolist()
    assert [r["score"] for r in results] == inst.scores.tolist()
    # categories: the vocabulary and its thing flags
    categories = json.loads((tmp_path / CATEGORIES_FILE).read_text())["categories"]
    assert categories == [{"id": k, "name": n, "isthing": int(n not in ("sky", "grass"))}
                          for k, n in enumerate(CLASSES)]

    loaded = load_masks(str(tmp_path), "coffee")
    assert torch.equal(loaded["panoptic_seg"][0], seg) and loaded["panoptic_seg"][1] == info
    assert torch.equal(loaded["sem_seg"].argmax(0), outputs["sem_seg"].argmax(0))
    for field in ("pred_masks", "pred_classes", "scores"):
        assert torch.equal(getattr(loaded["instances"], field), getattr(inst, field))
    assert torch.equal(loaded["instances"].pred_boxes.tensor, inst.pred_boxes.tensor)


def test_files_are_never_replaced(predictor, outputs, tmp_path):
    predictor.save_masks(outputs, str(tmp_path), "coffee")
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    with pytest.raises(FileExistsError, match="coffee.panoptic.png exists"):
        predictor.save_masks({"panoptic_seg": outputs["panoptic_seg"]}, str(tmp_path), "coffee")
    # another image of the same vocabulary shares categories.json
    predictor.save_masks({"sem_seg": outputs["sem_seg"]}, str(tmp_path), "other")
    # another vocabulary refuses the folder before writing anything
    with pytest.raises(ValueError, match="lists another vocabulary"):
        save_masks({"sem_seg": outputs["sem_seg"]}, str(tmp_path), "third", CLASSES[::-1], [True] * 5)
    assert {f: (tmp_path / f).read_bytes() for f in before} == before
    assert sorted(os.listdir(tmp_path)) == sorted(list(before) + ["other.semantic.png"])


def test_files_get_the_permissions_of_an_ordinary_new_file(predictor, outputs, tmp_path):
    """Readable by whoever may read the folder's other files (not the private 0600 of a
    temporary file)."""
    import stat

    umask = os.umask(0o022)
    try:
        written = predictor.save_masks(outputs, str(tmp_path), "coffee")
    finally:
        os.umask(umask)
    modes = {os.path.basename(p): stat.S_IMODE(os.stat(p).st_mode) for p in written + [str(tmp_path / CATEGORIES_FILE)]}
    assert modes == {name: 0o644 for name in modes}


def test_more_than_255_classes_make_a_16_bit_label_png(tmp_path):
    labels = np.array([[0, 254, 255], [300, 846, -1]])
    write_semantic(str(tmp_path / "a.png"), labels, num_classes=847)
    with Image.open(tmp_path / "a.png") as png:
        assert png.mode.startswith("I")  # a 16-bit gray PNG
    read = read_semantic(str(tmp_path / "a.png"))
    assert read.dtype == np.uint16 and read.tolist() == [[0, 254, 255], [300, 846, 65535]]
    write_semantic(str(tmp_path / "b.png"), np.array([[0, 254, -1]]), num_classes=255)
    assert read_semantic(str(tmp_path / "b.png")).tolist() == [[0, 254, 255]]
    with pytest.raises(ValueError, match="indices below 255"):
        write_semantic(str(tmp_path / "c.png"), np.array([[255]]), num_classes=255)


# ---- a folder of files scores as the outputs do ------------------------------------------
def noisy_outputs(record, vocabulary, is_thing, seed):
    """The real post-processing of mask / class probabilities made from the ground truth
    with errors: masks blurred with noise and shifted, one given the wrong class,
    and an extra noise mask. ``vocabulary``: the dataset's class names (a ground-truth
    segment whose class is not among them gets no class)."""
    rng = np.random.default_rng(seed)
    ade = [c["name"] for c in get_vocabulary("ade20k_150")]
    pan = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])).astype(np.uint32))
    segments = record["segments_info"]
    masks = np.stack([pan == s["id"] for s in segments] + [rng.random(pan.shape) > 0.7]).astype(np.float32)
    masks[0] = np.roll(masks[0], 3, axis=1)
    masks[1:-1] = np.roll(masks[1:-1], 1, axis=2)  # IoU below the strictest AP thresholds
    mask_probs = torch.as_tensor(np.clip(0.8 * masks + 0.3 * rng.random(masks.shape), 0, 1),
                                 dtype=torch.float32)
    size = len(vocabulary)
    class_probs = torch.full((len(masks), size + 1), 0.1 / size)
    classes = [vocabulary.index(ade[s["category_id"]]) if ade[s["category_id"]] in vocabulary
               else None for s in segments]
    for m, k in enumerate(classes):
        if k is not None:
            class_probs[m, k] = 0.5 + 0.4 * rng.random()
    wrong = max(m for m, k in enumerate(classes) if k is not None)
    class_probs[wrong, (classes[wrong] + 1) % size] = 0.95
    class_probs[-1, 7] = 0.6
    things = torch.as_tensor(is_thing)
    image_masks = ImageMasks(mask_probs)
    return {
        "sem_seg": semantic_inference(class_probs, mask_probs),
        "panoptic_seg": panoptic_inference(class_probs, mask_probs, things, 0.3, 0.5,
                                           masks=image_masks),
        "instances": instance_inference(class_probs, mask_probs, 100, things, masks=image_masks),
    }


def evaluate(evaluator, records, outputs):
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([record], [output])
    return evaluator.evaluate()


def test_a_folder_of_mask_files_scores_as_the_outputs(tmp_path):
    from maskclip_d2.data.datasets.register_ade20k_150 import register_all_ade20k_150

    write_ade20k_150(tmp_path / "data")
    run_prepare("prepare_ade20k_150", tmp_path / "data")
    register_all_ade20k_150(str(tmp_path / "data"))
    panoptic_records = DatasetCatalog.get("ade20k_panoptic_val")
    cfg = get_cfg()
    for dataset, task, metrics in [("ade20k_panoptic_val", "panoptic_seg", ("PQ", "SQ", "RQ")),
                                   ("ade20k_sem_seg_val", "sem_seg", ("mIoU", "pACC")),
                                   ("ade20k_instance_val", "segm", ("AP",))]:
        metadata = MetadataCatalog.get(dataset)
        names = list(metadata.get("stuff_classes", None) or metadata.thing_classes)
        things = {c["name"] for c in get_vocabulary("ade20k_150") if c["isthing"]}
        is_thing = [n in things for n in names]
        outputs = {r["file_name"]: noisy_outputs(r, names, is_thing, seed)
                   for seed, r in enumerate(panoptic_records)}
        folder = tmp_path / "masks" / dataset
        for name, out in outputs.items():
            save_masks(out, str(folder), stem(name), names, is_thing)

        cfg.OUTPUT_DIR = str(tmp_path / "eval" / dataset)
        evaluator = build_evaluator(cfg, dataset)
        records = DatasetCatalog.get(dataset)
        direct = evaluate(evaluator, records, [outputs[r["file_name"]] for r in records])[task]
        from_files = evaluate(evaluator, records, [
            load_masks(str(folder), stem(r["file_name"])) for r in records])[task]
        assert from_files.keys() == direct.keys(), dataset
        # equal, per-class NaN (a class in neither prediction nor ground truth) included
        np.testing.assert_array_equal(list(from_files.values()), list(direct.values()), dataset)
        # the errors put every metric strictly between 0 and 100
        for metric in metrics:
            assert 0 < direct[metric] < 100, (dataset, metric, direct[metric])


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


# ---- demo/demo.py --save-masks -------------------------------------------------------------
def test_demo_writes_mask_files_beside_its_pictures_and_never_replaces_them(tmp_path, capsys):
    from helpers.photos import VOCAB
    from helpers.photos import photo_file as _photo
    from helpers.scripts import load_script

    demo = load_script("demo/demo.py")

    inputs = tmp_path / "photos"
    inputs.mkdir()
    photo = skimage.data.coffee()[::4, ::4]
    _photo(str(inputs), "coffee", array=photo)
    out = tmp_path / "out"
    argv = ["--config-file", TINY, "--input", str(inputs), "--output", str(out), "--vocab", VOCAB,
            "--stuff", "sky; grass", "--task", "all", "--save-masks"]
    torch.manual_seed(0)
    assert demo.main(argv) == 0
    assert sorted(os.listdir(out)) == sorted(
        ["coffee.json", "coffee_semantic.png", "coffee_panoptic.png", "coffee_instance.png",
         "coffee.panoptic.png", "coffee.panoptic.json", "coffee.semantic.png",
         "coffee.instances.json", CATEGORIES_FILE, "demo_run.json"])
    # the same model (same seed) through the Python API gives what the files hold
    torch.manual_seed(0)
    expected = Predictor(TINY)(photo, vocabulary=CLASSES, stuff=["sky", "grass"], task="all")
    loaded = load_masks(str(out), "coffee")
    assert torch.equal(loaded["panoptic_seg"][0], expected["panoptic_seg"][0])
    assert loaded["panoptic_seg"][1] == expected["panoptic_seg"][1]
    assert torch.equal(loaded["sem_seg"].argmax(0), expected["sem_seg"].argmax(0))
    assert torch.equal(loaded["instances"].pred_masks, expected["instances"].pred_masks)
    assert json.loads((out / CATEGORIES_FILE).read_text())["categories"][3] == \
        {"id": 3, "name": "sky", "isthing": 0}

    # a second run into the same folder is refused before the model loads; nothing changes
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    capsys.readouterr()
    assert demo.main(argv + ["--opts", "MODEL.CLIP.WEIGHTS", "/nonexistent.pt"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before
    # --overwrite replaces the earlier run's files, mask files included (the run record lists
    # them), and keeps the user's own
    (out / "notes.txt").write_text("mine")
    (out / "coffee.semantic.png").write_bytes(b"stale")
    torch.manual_seed(0)
    assert demo.main(argv + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert {f: (out / f).read_bytes() for f in os.listdir(out) if f not in ("notes.txt", "demo_run.json")} == \
        {f: b for f, b in before.items() if f != "demo_run.json"}
