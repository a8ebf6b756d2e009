"""The whole pipeline over an OpenCLIP tower: train_net.py trains stage 2 on the tiny COCO
panoptic scenes, and the Predictor and the demo run, with MODEL.CLIP.NAME naming a tiny random
OpenCLIP model (an OpenCLIP ``local-dir:`` folder written here; nothing is downloaded)."""
import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import skimage.data
import torch
from open_clip.transformer import VisionTransformer as OpenCLIPVisionTransformer

from helpers.scripts import load_script
from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from helpers.openclip_models import write_local_dir
from helpers.tiny_datasets import isolated_catalogs  # noqa: F401  (autouse fixture)
from helpers.tiny_datasets import SCENE_SIZE, run_prepare, write_coco_panoptic_scenes

REPO = Path(__file__).resolve().parents[2]
train_net = load_script("train_net.py")

TINY = str(REPO / "configs/tiny/maskclip_tiny.yaml")
TRAIN = "coco_2017_train_panoptic"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def openclip_opts(tmp_path_factory):
    """Config overrides for a tiny OpenCLIP tower: 64 px, 4 x 4 patches, layer scale, GELU,
    its own normalisation (0.5 / 0.5, as in its preprocess config)."""
    name = write_local_dir(str(tmp_path_factory.mktemp("openclip") / "tiny"), image_size=64,
                           patch_size=16, layers=4, ls_init_value=0.5, context_length=32)
    return ["MODEL.CLIP.NAME", name, "MODEL.CLIP.WEIGHTS", "random",
            "MODEL.CLIP.PIXEL_MEAN", "[127.5, 127.5, 127.5]",
            "MODEL.CLIP.PIXEL_STD", "[127.5, 127.5, 127.5]"]


def test_train_net_trains_stage_2_over_an_openclip_tower(tmp_path, openclip_opts):
    root = tmp_path / "data"
    write_coco_panoptic_scenes(root, splits=("train",), num_images=2)
    write_coco_panoptic_scenes(root, splits=("val",), num_images=1)
    run_prepare("prepare_coco_panoptic", root)
    register_all_coco_panoptic(str(root))
    out = tmp_path / "out"
    values = {
        "DATASETS.TRAIN": f"('{TRAIN}',)", "DATASETS.TEST": "()",
        "INPUT.IMAGE_SIZE": SCENE_SIZE, "INPUT.MIN_SCALE": 1.0, "INPUT.MAX_SCALE": 1.0,
        "SOLVER.IMS_PER_BATCH": 2, "SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 100,
        "SEED": 0, "OUTPUT_DIR": str(out),
    }
    opts = [str(x) for kv in values.items() for x in kv] + openclip_opts
    args = train_net.default_argument_parser().parse_args(["--config-file", TINY, *opts])

    built = {}
    build_model = train_net.Trainer.build_model

    def spy(cls, cfg):
        model = build_model(cfg)
        built["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        built["visual"] = model.encoder.visual
        return model

    train_net.Trainer.build_model = classmethod(spy)
    try:
        train_net.main(args)
    finally:
        train_net.Trainer.build_model = build_model
    assert isinstance(built["visual"], OpenCLIPVisionTransformer)

    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert "encoder.visual.transformer.resblocks.0.ls_1.gamma" in final  # OpenCLIP's layer scale
    assert [k for k in final if k.startswith("encoder.rma_layers.")][0].startswith("encoder.rma_layers.1.")
    changed = [k for k in final if not torch.equal(final[k], built["initial"][k])]
    assert changed and all(k.startswith("encoder.rma_layers.") for k in changed)  # CLIP frozen
    losses = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert losses[-1]["iteration"] == 2 and math.isfinite(losses[-1]["total_loss"])


def test_predictor_and_demo_run_over_an_openclip_tower(tmp_path, openclip_opts, capsys):
    cfg = get_maskclip_cfg(TINY, openclip_opts)
    predictor = Predictor(cfg)
    assert isinstance(predictor.model.encoder.visual, OpenCLIPVisionTransformer)
    assert predictor.model.text_encoder.context_length == 32
    image = skimage.data.chelsea()
    outputs = predictor(image, vocabulary=["cat, kitty", "sofa"], task=["semantic", "panoptic"])
    assert outputs["sem_seg"].shape == (2, 300, 451)
    seg, segments = outputs["panoptic_seg"]
    assert seg.shape == (300, 451) and all(s["category_id"] in (0, 1) for s in segments)

    spec = importlib.util.spec_from_file_location("maskclip_demo", REPO / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    photos = tmp_path / "photos"
    photos.mkdir()
    skimage.io.imsave(photos / "coffee.png", skimage.data.coffee())
    out = tmp_path / "out"
    rc = demo.main(["--config-file", TINY, "--input", str(photos), "--output", str(out),
                    "--vocab", "cup; table", "--task", "semantic", "--opts", *openclip_opts])
    assert rc == 0
    with open(out / "coffee.json") as f:
        record = json.load(f)
    assert record["vocabulary"] == ["cup", "table"]
    assert sum(s["area"] for s in record["semantic"]) == 600 * 400
    assert os.path.exists(out / "coffee_semantic.png")


def test_meta_architecture_checks_the_openclip_tower_at_build_time(tmp_path, openclip_opts, caplog):
    from detectron2.modeling import build_model

    # A non-square CLIP input: refused before anything runs (images are resized to R x R).
    name = write_local_dir(str(tmp_path / "wide"), image_size=(48, 64), patch_size=16)
    cfg = get_maskclip_cfg(TINY, ["MODEL.CLIP.NAME", name, "MODEL.CLIP.WEIGHTS", "random"])
    with pytest.raises(ValueError, match=r"\(48, 64\).*square"):
        build_model(cfg)
    # CLIP's normalisation differing from the model's own (0.5 / 0.5 here): a warning.
    cfg = get_maskclip_cfg(TINY, openclip_opts[:4])
    with caplog.at_level("WARNING"):
        build_model(cfg)
    assert "PIXEL_MEAN / PIXEL_STD" in caplog.text and "127.5" in caplog.text
