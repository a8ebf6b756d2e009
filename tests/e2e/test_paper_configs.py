"""The configs of the paper's evaluations: every shipped config resolves its vocabularies from
the package, with no dataset on disk; the paper's model builds and segments with a preset."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from detectron2.data import MetadataCatalog

from maskclip_d2 import get_maskclip_cfg
from maskclip_d2.modeling.maskclip import vocabulary_from_metadata

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    p for p in (REPO / "configs").rglob("*.yaml")
    if "proposals" not in p.parts and p.name != "Base-MaskCLIP.yaml"
)
# dataset -> (classes, things)
EXPECTED = {
    "coco_2017_train_panoptic": (133, 80),
    "coco_2017_val_panoptic_with_sem_seg": (133, 80),
    "ade20k_panoptic_val": (150, 100),
    "ade20k_full_sem_seg_val": (847, 0),
    "pascal_context_59_sem_seg_val": (59, 0),
    "pascal_context_459_sem_seg_val": (459, 0),
    "lvis_v1_val": (1203, 1203),
    "coco_2017_val_ovd_generalized": (65, 65),
    "coco_2017_val_ovd_constrained_base": (48, 48),
    "coco_2017_val_ovd_constrained_target": (17, 17),
}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_names_registered_datasets_with_shipped_vocabularies(config):
    cfg = get_maskclip_cfg(str(config))
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        names, is_thing = vocabulary_from_metadata(MetadataCatalog.get(name))
        if name in EXPECTED:
            assert (len(names), sum(is_thing)) == EXPECTED[name], name


def test_paper_configs_use_the_authors_protocol():
    for config in (REPO / "configs" / "paper").glob("*.yaml"):
        mc = get_maskclip_cfg(str(config)).MODEL.MASKCLIP
        assert (mc.SPLIT_SYNONYMS, mc.CLIP_INPUT, mc.CLIP_INTERPOLATION, tuple(mc.PROMPT_TEMPLATES)) == (
            False, "padded_batch", "bicubic", ("{}",)), config.name
        assert (mc.TEST.OBJECT_MASK_THRESHOLD, mc.TEST.OVERLAP_THRESHOLD, mc.TEST.OVERLAP_RULE,
                mc.TEST.INSTANCE_THING_FILTER) == (0.3, 0.5, "mask2former", "after_topk"), config.name
        assert get_maskclip_cfg(str(config)).MODEL.CLIP.NAME == "ViT-L/14@336px"


def test_unknown_dataset_lists_the_registered_ones():
    with pytest.raises(KeyError, match="'ade20k_panoptic_val'.*Registered datasets: .*lvis_v1_val"):
        vocabulary_from_metadata(MetadataCatalog.get("ade20k_panoptc_val"))


SCRIPT = r"""
import json, sys
import numpy as np
import skimage.data
from detectron2.data import DatasetCatalog, MetadataCatalog
from maskclip_d2 import Predictor, get_maskclip_cfg

counts = {n: len(MetadataCatalog.get(n).get("stuff_classes") or MetadataCatalog.get(n).thing_classes)
          for n in sys.argv[2:]}
# ViT-B/16 instead of the paper's ViT-L/14@336px keeps this test short; the rest is the config's.
cfg = get_maskclip_cfg(sys.argv[1], ["MODEL.CLIP.NAME", "ViT-B/16", "MODEL.CLIP.WEIGHTS", "random", "MODEL.DEVICE", "cpu",
                                     "INPUT.MIN_SIZE_TEST", "160", "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", ""])
predictor = Predictor(cfg)
out = predictor(skimage.data.coffee(), vocabulary="ade20k_150", task="semantic")
try:
    DatasetCatalog.get("ade20k_panoptic_val")
    error = None
except FileNotFoundError as e:
    error = str(e)
print(json.dumps({"counts": counts, "sem_seg": list(out["sem_seg"].shape),
                  "things": int(predictor.model.is_thing.sum()), "error": error}))
"""


def test_paper_model_builds_and_segments_with_an_empty_datasets_folder(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(REPO / "configs/coco/maskclip_vitl14_336.yaml"), *EXPECTED],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["counts"] == {name: n for name, (n, _) in EXPECTED.items()}
    assert report["sem_seg"] == [150, 400, 600] and report["things"] == 100
    assert "ADEChallengeData2016" in report["error"]
    assert "python datasets/prepare_ade20k_150.py" in report["error"]
