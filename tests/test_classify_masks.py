"""Predictor.classify_masks: masks of your own, named by the model exactly as its ground-truth
mask mode names a dataset's masks; bad masks refused with the reason."""
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import skimage.data
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from PIL import Image

from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.data.dataset_mappers import COCOPanopticLSJDatasetMapper
from maskclip_d2.data.datasets.register_synthetic_world import register_all_synthetic_world
from maskclip_d2.modeling.postprocessing import semantic_inference
from maskclip_d2.synthetic_world.world import write_world

from helpers.photos import TINY

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PHOTO = np.zeros((40, 60, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    write_world(str(root), num_train=1, num_val=2, seed=0)
    register_all_synthetic_world(str(root))
    return root


@torch.no_grad()
@pytest.mark.parametrize("mode", ["mask_tokens", "rma"])
def test_classifying_the_gt_masks_equals_the_gt_mask_mode(world, mode):
    cfg = get_maskclip_cfg(str(CONFIGS / "synthetic" / "maskclip_gt_masks.yaml"), [
        "MODEL.CLIP.WEIGHTS", "random", "MODEL.MASKCLIP.MODE", mode,
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "('synthetic_world_val_all',)",
    ])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    metadata = MetadataCatalog.get("synthetic_world_val_all")
    model.set_vocabulary_from_metadata(metadata)
    predictor = Predictor(cfg, model=model)
    mapper = COCOPanopticLSJDatasetMapper(cfg, is_train=False)
    for record in DatasetCatalog.get("synthetic_world_val_all"):
        # the reference: the GT-mask mode on the evaluation mapper's input
        x = mapper(dict(record))
        (reference,) = model([x])
        logits = model.predict([x], model.text_encoder.encode_vocabulary(model.vocabulary))["class_logits"]
        gt = x["instances"].gt_masks.tensor

        # ours, from the image file and the masks as COCO RLEs (compressed, as SAM writes them)
        rles = [mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in gt]
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        out = predictor.classify_masks(record["file_name"], rles)
        assert torch.allclose(out.class_scores, logits[0].softmax(-1), atol=1e-6)
        assert out.class_scores.shape == (len(gt), len(metadata.stuff_classes) + 1)
        assert torch.equal(out.pred_classes, out.class_scores[:, :-1].argmax(1))
        # the semantic output of the GT-mask mode, from these scores and the given masks
        assert torch.allclose(semantic_inference(out.class_scores, gt.float()), reference["sem_seg"], atol=1e-6)
        if mode == "rma":  # the encoder's refined masks, one per given mask
            assert out.pred_masks.shape == gt.shape and out.pred_masks.dtype == torch.bool
        else:
            assert torch.equal(out.pred_masks, gt)


def test_a_label_png_gives_one_mask_per_label(tmp_path):
    predictor = Predictor(TINY)
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[:20, :30], labels[20:, 10:] = 7, 3
    Image.fromarray(labels).save(tmp_path / "labels.png")
    out = predictor.classify_masks(PHOTO, tmp_path / "labels.png", vocabulary=["cup", "table"])
    assert out.mask_ids.tolist() == [3, 7]
    masks = torch.from_numpy(np.stack([labels == 3, labels == 7]))
    same = predictor.classify_masks(PHOTO, masks.numpy(), vocabulary=["cup", "table"])
    assert torch.equal(out.class_scores, same.class_scores)
    assert out.image_size == (40, 60) and out.pred_masks.shape == (2, 40, 60)
    assert torch.allclose(out.class_scores.sum(1), torch.ones(2))


@pytest.mark.parametrize("masks, message", [
    (np.ones((2, 40, 61), dtype=bool), r"size \(40, 61\).*image of size \(40, 60\)"),
    (np.ones((2, 40, 60), dtype=np.uint8), "must be boolean.*astype\\(bool\\)"),
    (np.ones((40, 60), dtype=bool), r"\(N, H, W\)"),
    (np.zeros((0, 40, 60), dtype=bool), "no masks"),
    (np.stack([np.ones((40, 60), bool), np.zeros((40, 60), bool)]), r"mask\(s\) \[1\] cover no pixel"),
    (np.ones((5, 40, 60), dtype=bool), "5 masks, more than MODEL.MASKCLIP.MAX_GIVEN_MASKS = 4"),
    ("missing.png", "missing.png: no such masks file"),
    ([{"counts": "x"}], "entry 0 is not a COCO RLE"),
])
def test_bad_masks_are_refused_naming_what_is_wrong(masks, message):
    predictor = Predictor(get_maskclip_cfg(TINY, ["MODEL.MASKCLIP.MAX_GIVEN_MASKS", 4]))
    calls = []
    predictor.model.predict = lambda *a, **k: calls.append(1)  # never reached
    with pytest.raises(ValueError, match=message):
        predictor.classify_masks(PHOTO, masks)
    assert not calls


def test_demo_names_the_masks_of_a_label_png(tmp_path, capsys):
    from helpers.photos import CLASSES, VOCAB
    from helpers.scripts import load_script

    demo = load_script("demo/demo.py")

    photo = skimage.data.coffee()  # (400, 600, 3)
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    labels = np.zeros(photo.shape[:2], dtype=np.uint8)
    labels[:200], labels[250:, 100:500] = 1, 2
    (tmp_path / "masks").mkdir()
    Image.fromarray(labels).save(tmp_path / "masks" / "coffee.png")
    out = tmp_path / "out"
    # a folder of <input name>.png, and a scaled-down image whose masks follow it
    rc = demo.main(["--config-file", TINY, "--input", str(tmp_path / "coffee.png"), "--output", str(out),
                    "--vocab", VOCAB, "--masks", str(tmp_path / "masks"), "--max-image-size", "300",
                    "--opts", "MODEL.MASKCLIP.MODE", "mask_tokens"])
    assert rc == 0
    with Image.open(out / "coffee_masks.png") as drawn:  # the scaled image, a legend below
        assert drawn.size[0] == 300 and drawn.size[1] > 200
    record = json.loads((out / "coffee.json").read_text())
    assert [s["mask_id"] for s in record["masks"]] == [1, 2]
    assert all(s["class"] in CLASSES and 0 <= s["score"] <= 1 for s in record["masks"])
    assert [s["area"] for s in record["masks"]] == [100 * 300, 75 * 200]  # the given masks, scaled

    # one input, its masks as a JSON file of COCO RLEs (what SAM's coco_rle output gives)
    rles = [mask_util.encode(np.asfortranarray((labels == v).astype(np.uint8))) for v in (1, 2)]
    (tmp_path / "masks.json").write_text(json.dumps([dict(r, counts=r["counts"].decode("ascii")) for r in rles]))
    rc = demo.main(["--config-file", TINY, "--input", str(tmp_path / "coffee.png"), "--output",
                    str(tmp_path / "out_rle"), "--vocab", VOCAB, "--masks", str(tmp_path / "masks.json")])
    record = json.loads((tmp_path / "out_rle" / "coffee.json").read_text())
    assert rc == 0 and [s["mask_id"] for s in record["masks"]] == [0, 1]

    # refused before the model loads: a missing masks file for an input
    (tmp_path / "empty").mkdir()
    rc = demo.main(["--config-file", TINY, "--input", str(tmp_path / "coffee.png"), "--output", str(out),
                    "--masks", str(tmp_path / "empty")])
    assert rc == 2 and f"no coffee.png or coffee.json in {tmp_path / 'empty'}" in capsys.readouterr().err
