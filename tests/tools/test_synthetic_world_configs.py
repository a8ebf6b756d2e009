"""The synthetic world's configs name the weights where ``make demo`` trains them, so
``demo/demo.py --config-file configs/synthetic/maskclip_rma.yaml`` (and ``Predictor`` on that
config) loads the demo's model without overrides; training-free modes and stage-2 training
load no checkpoint."""
import importlib.util
import os
import re
from pathlib import Path

from maskclip_d2 import Predictor, get_maskclip_cfg

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("synthetic_world_tool", REPO / "tools" / "synthetic_world.py")
synthetic_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(synthetic_world)


def _make_demo_folder():
    """``SYNTHETIC ?= ...`` of the Makefile: where ``make demo`` trains."""
    text = (REPO / "Makefile").read_text()
    return re.search(r"^SYNTHETIC \?= (\S+)$", text, re.M).group(1)


def _argv_value(argv, key):
    return argv[argv.index(key) + 1]


def test_the_rma_config_names_the_weights_make_demo_writes():
    out = Path(_make_demo_folder())
    jobs = {j.name: j for j in synthetic_world.build_jobs(out, synthetic_world.SCALES["ci"], None)}
    written = {
        "MODEL.CLIP.WEIGHTS": _argv_value(jobs["clip"].argv, "--output"),
        "MODEL.MASKCLIP.PROPOSAL_WEIGHTS": str(Path(_argv_value(jobs["stage1"].argv, "OUTPUT_DIR")) / "model_final.pth"),
        "MODEL.WEIGHTS": str(Path(_argv_value(jobs["stage2"].argv, "OUTPUT_DIR")) / "model_final.pth"),
    }
    cfg = get_maskclip_cfg(str(REPO / "configs/synthetic/maskclip_rma.yaml"))
    assert {k: os.path.normpath(v) for k, v in written.items()} == {
        "MODEL.CLIP.WEIGHTS": os.path.normpath(cfg.MODEL.CLIP.WEIGHTS),
        "MODEL.MASKCLIP.PROPOSAL_WEIGHTS": os.path.normpath(cfg.MODEL.MASKCLIP.PROPOSAL_WEIGHTS),
        "MODEL.WEIGHTS": os.path.normpath(cfg.MODEL.WEIGHTS),
    }
    # Stage 2 trains from scratch, not from the config's (the last run's) stage-2 weights.
    assert _argv_value(jobs["stage2"].argv, "MODEL.WEIGHTS") == ""


def test_training_free_modes_load_no_checkpoint():
    for name in ("clip_baseline", "maskclip_mask_tokens", "maskclip_gt_masks"):
        assert get_maskclip_cfg(str(REPO / f"configs/synthetic/{name}.yaml")).MODEL.WEIGHTS == "", name


def test_the_predictor_takes_config_overrides():
    tiny = str(REPO / "configs/tiny/maskclip_tiny.yaml")
    predictor = Predictor(tiny, opts=["MODEL.MASKCLIP.NUM_PROPOSALS", "3", "TEST.DETECTIONS_PER_IMAGE", "7"])
    assert predictor.cfg.MODEL.MASKCLIP.NUM_PROPOSALS == 3
    assert predictor.cfg.TEST.DETECTIONS_PER_IMAGE == 7
    cfg = get_maskclip_cfg(tiny)
    again = Predictor(cfg, opts=["TEST.DETECTIONS_PER_IMAGE", "5"], model=predictor.model)
    assert again.cfg.TEST.DETECTIONS_PER_IMAGE == 5 and cfg.TEST.DETECTIONS_PER_IMAGE != 5  # a copy
    try:
        Predictor(tiny, opts=["TEST.DETECTIONS_PER_IMAGE"])
    except ValueError as err:
        assert "KEY VALUE pairs" in str(err)
    else:
        raise AssertionError("an odd opts list was accepted")


def test_make_demo_marks_the_worlds_stuff_and_draws_input_beside_output():
    from maskclip_d2.synthetic_world.world import CONCEPTS

    text = (REPO / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^(SYNTHETIC_\w+) := (.*)$", text, re.M))
    demo = re.search(r"^demo:.*?\n\n", text, re.M | re.S).group(0)
    assert '--stuff "$(SYNTHETIC_STUFF)"' in demo and "--side-by-side" in demo
    vocab = [c.strip() for c in variables["SYNTHETIC_VOCAB"].split(";")]
    stuff = [c.strip() for c in variables["SYNTHETIC_STUFF"].split(";")]
    world = {c.name: c.isthing for c in CONCEPTS}
    assert sorted(vocab) == sorted(world)
    assert sorted(stuff) == sorted(name for name, thing in world.items() if not thing)


def test_the_demo_before_make_demo_says_which_file_is_missing_and_what_trains_it(tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("maskclip_demo", REPO / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "scene.png")
    monkeypatch.chdir(tmp_path)  # a checkout where `make demo` has not run
    rc = demo.main(["--config-file", str(REPO / "configs/synthetic/maskclip_rma.yaml"),
                    "--input", "scene.png", "--output", "out"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ".cache/synthetic_world_ci/" in err and "run `make demo`" in err
