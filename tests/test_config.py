"""Every shipped config loads with the MaskCLIP keys; the defaults are the paper's."""
from pathlib import Path

import pytest
from detectron2.config import get_cfg

from maskclip_d2 import add_maskclip_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_defaults_are_the_papers():
    cfg = add_maskclip_config(get_cfg())
    assert cfg.MODEL.CLIP.NAME == "ViT-L/14@336px"
    assert cfg.MODEL.MASKCLIP.MODE == "rma"
    assert cfg.MODEL.MASKCLIP.RMA_LAYERS == []  # every L/4-th layer: 6, 12, 18, 24
    assert cfg.MODEL.MASKCLIP.NUM_PROPOSALS == 100
    assert cfg.MODEL.MASKCLIP.TEMPERATURE == 0.01
    assert (cfg.MODEL.MASKCLIP.CLASS_WEIGHT, cfg.MODEL.MASKCLIP.DICE_WEIGHT, cfg.MODEL.MASKCLIP.MASK_WEIGHT) == (2.0, 5.0, 5.0)
    assert cfg.MODEL.MASKCLIP.TRAIN_NUM_POINTS == 12544
    assert (cfg.MODEL.MASKCLIP.OVERSAMPLE_RATIO, cfg.MODEL.MASKCLIP.IMPORTANCE_SAMPLE_RATIO) == (3.0, 0.75)


def test_add_config_is_idempotent():
    cfg = add_maskclip_config(get_cfg())
    cfg.MODEL.MASKCLIP.MODE = "mask_tokens"
    add_maskclip_config(cfg)
    assert cfg.MODEL.MASKCLIP.MODE == "mask_tokens"


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(p.parents[1])) for p in CONFIGS])
def test_config_loads(path):
    cfg = add_maskclip_config(get_cfg())
    cfg.merge_from_file(str(path))  # unknown keys or a broken _BASE_ chain raise here


def test_paper_config_chain():
    cfg = add_maskclip_config(get_cfg())
    cfg.merge_from_file(str(Path(__file__).resolve().parent.parent / "configs/coco/maskclip_vitl14_336.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE == "MaskCLIP"
    assert cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.MAX_ITER == 10000 and cfg.SOLVER.IMS_PER_BATCH == 8
    assert cfg.SOLVER.OPTIMIZER == "ADAMW"


def test_tiny_config_names_no_remote_weights():
    text = (Path(__file__).resolve().parent.parent / "configs/tiny/maskclip_tiny.yaml").read_text()
    assert "detectron2://" not in text and "http" not in text
    cfg = add_maskclip_config(get_cfg())
    cfg.merge_from_file(str(Path(__file__).resolve().parent.parent / "configs/tiny/maskclip_tiny.yaml"))
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.MASKCLIP.PROPOSAL_WEIGHTS == ""
    assert cfg.MODEL.CLIP.WEIGHTS == "random"


# ---- the device and CPU threads, when the user does not say ---------------------------------
def test_the_device_is_the_gpu_if_usable_else_the_cpu_unless_the_user_set_one(tmp_path):
    import torch

    from maskclip_d2 import get_maskclip_cfg

    paper = str(REPO / "configs" / "coco" / "maskclip_vitl14_336.yaml")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert get_maskclip_cfg(paper).MODEL.DEVICE == auto  # Detectron2's default is "cuda"
    assert get_maskclip_cfg().MODEL.DEVICE == auto
    assert get_maskclip_cfg(paper, ["MODEL.DEVICE", "cuda"]).MODEL.DEVICE == "cuda"
    # set in a config file, or in one of its _BASE_ files
    base = tmp_path / "base.yaml"
    base.write_text(f'_BASE_: "{paper}"\nMODEL:\n  DEVICE: "cuda:1"\n')
    child = tmp_path / "child.yaml"
    child.write_text('_BASE_: "base.yaml"\nSOLVER:\n  MAX_ITER: 5\n')
    assert get_maskclip_cfg(str(child)).MODEL.DEVICE == "cuda:1"


def test_cpu_processes_share_the_machines_cores(monkeypatch):
    import os

    import torch

    from maskclip_d2 import get_maskclip_cfg

    from helpers.scripts import load_script

    train_net = load_script("train_net.py")

    cfg = get_maskclip_cfg(None, ["MODEL.DEVICE", "cpu"])
    before = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    try:
        assert train_net.cpu_threads_per_process(cfg, 4, environ={}) == 4
        assert torch.get_num_threads() == 4
        assert train_net.cpu_threads_per_process(cfg, 32, environ={}) == 1
        assert train_net.cpu_threads_per_process(cfg, 4, environ={"OMP_NUM_THREADS": "2"}) is None
        assert train_net.cpu_threads_per_process(cfg, 1, environ={}) is None
        cfg.MODEL.DEVICE = "cuda"
        assert train_net.cpu_threads_per_process(cfg, 4, environ={}) is None
    finally:
        torch.set_num_threads(before)
