"""What every command prints besides its own output: no dependency deprecation warnings (the
user cannot act on them), and config comments that say what the code does."""
import logging
import os
import re
import subprocess
import sys

import pytest
import skimage.data

from maskclip_d2 import Predictor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("command", [["demo/demo.py", "--help"], ["train_net.py", "--help"]])
def test_help_prints_no_dependency_deprecation_warnings(command):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="default")
    run = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "usage:" in run.stdout
    assert "pkg_resources" not in run.stderr and "torch.jit.script" not in run.stderr, run.stderr
    assert "Warning" not in run.stderr, run.stderr


def test_our_silencing_is_scoped_to_the_imports():
    """The same warning raised by the user's own code is still shown."""
    import warnings

    import maskclip_d2  # noqa: F401

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.warn("`torch.jit.script` is deprecated (the user's call)", FutureWarning)
    assert [str(w.message) for w in caught] == ["`torch.jit.script` is deprecated (the user's call)"]


def test_the_synthetic_configs_comment_on_long_class_names_is_what_happens():
    """configs/synthetic/maskclip_rma.yaml: CONTEXT_LENGTH 20; its comment says what a longer
    class name does: truncated, with a warning."""
    path = os.path.join(ROOT, "configs", "synthetic", "maskclip_rma.yaml")
    with open(path) as f:
        (comment,) = [line.split("#", 1)[1] for line in f if "CONTEXT_LENGTH" in line]
    assert re.search(r"truncated, with a warning", comment) and "error" not in comment

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("maskclip_d2.modeling.clip.text_encoder")
    logger.addHandler(handler)
    try:
        predictor = Predictor(path, opts=["MODEL.CLIP.WEIGHTS", "random", "MODEL.WEIGHTS", "",
                                          "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", ""])
        long_name = " ".join(["very"] * 30) + " long blob"
        out = predictor(skimage.data.coffee()[:64, :64], vocabulary=[long_name, "sand"], task="semantic")
    finally:
        logger.removeHandler(handler)
    assert out["sem_seg"].shape == (2, 64, 64)  # no error
    assert any("exceed CLIP's context of 20 tokens" in r.getMessage() for r in records)
