"""Segment Anything as the proposal source, with a small random SAM of the package's own modules:
its masks are SamAutomaticMaskGenerator's (the package is the reference), in the documented
order; the whole model, the Predictor and the demo run on a photograph with it; a missing
checkpoint fails before anything loads."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from detectron2.modeling import build_model
from segment_anything import SamAutomaticMaskGenerator

import maskclip_d2.modeling.maskclip as maskclip_module
from maskclip_d2 import Predictor, get_maskclip_cfg
from maskclip_d2.modeling.proposals.sam_proposals import SAM_CHECKPOINTS_URL, SAMProposals, build_sam

ROOT = Path(__file__).resolve().parents[3]
TINY_SAM = str(ROOT / "configs" / "tiny" / "maskclip_tiny_sam.yaml")
PHOTO = np.ascontiguousarray(skimage.data.coffee()[::3, ::3][:128, :192])  # (128, 192, 3)
# every path of the generator: crops, small-region removal, no quality filter (random SAM)
GENERATOR = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                 crop_n_layers=1, min_mask_region_area=20)


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_sam("tiny").eval()


def as_input(rgb, fmt="RGB"):
    image = rgb if fmt == "RGB" else rgb[..., ::-1]
    return {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))}


@torch.no_grad()
def test_proposals_are_the_generators_masks_best_predicted_iou_first(sam):
    reference = SamAutomaticMaskGenerator(sam, **GENERATOR).generate(PHOTO)
    reference = [r for r in reference if r["area"] > 0]
    assert len(reference) >= 6
    source = SAMProposals(sam, GENERATOR, num_proposals=5, mask_logit=10.0)
    records = source.generate(PHOTO)

    # the generator's masks, the 5 of highest predicted IoU, in that order (ties: stability, area)
    ious = sorted((r["predicted_iou"] for r in reference), reverse=True)
    assert [r["predicted_iou"] for r in records] == ious[:5]
    for r in records:
        same = [q for q in reference if q["predicted_iou"] == r["predicted_iou"]]
        assert any(np.array_equal(q["segmentation"], r["segmentation"]) for q in same)
    assert [r["predicted_iou"] for r in reference] != ious  # the generator's own order differs

    # at S = 64 each cell is a 2 x 3 block of the 128 x 192 image: a cell's logit is +-10 x the
    # covered fraction's distance from one half, positive where more than half is covered
    logits, objectness = source([as_input(PHOTO)], 64)
    masks = np.stack([r["segmentation"] for r in records]).astype(np.float64)
    covered = masks.reshape(5, 64, 2, 64, 3).mean(axis=(2, 4))
    assert logits.shape == (1, 5, 64, 64)
    assert torch.allclose(logits[0], torch.from_numpy((2 * covered - 1) * 10.0).float(), atol=1e-5)
    assert objectness[0].tolist() == pytest.approx([min(max(r["predicted_iou"], 0), 1) for r in records])

    # BGR inputs are the same picture; a padded batch puts the image top-left
    bgr = SAMProposals(sam, GENERATOR, 5, 10.0, input_format="BGR")([as_input(PHOTO, "BGR")], 64)
    assert torch.equal(bgr[0], logits)
    padded, _ = source([as_input(PHOTO)], 64, padded_size=(256, 192))
    assert torch.allclose(padded[0, :, :32], torch.from_numpy(
        (2 * masks.reshape(5, 32, 4, 64, 3).mean(axis=(2, 4)) - 1) * 10.0).float(), atol=1e-5)
    assert (padded[0, :, 32:] == -10.0).all()


@torch.no_grad()
def test_the_whole_model_segments_a_photograph_with_sam_proposals():
    torch.manual_seed(0)
    predictor = Predictor(get_maskclip_cfg(TINY_SAM, ["MODEL.MASKCLIP.MODE", "mask_tokens"]))
    photo = skimage.data.astronaut()  # (512, 512, 3): the model sees it at 128 x 128
    proposals, _ = predictor.model.proposal_network([predictor.inputs(photo)], 64)
    assert proposals.shape[1] >= 2
    out = predictor(photo, vocabulary=["person", "rocket", "sky"], task="all")
    assert out["sem_seg"].shape == (3, 512, 512)
    seg, segments = out["panoptic_seg"]
    assert seg.shape == (512, 512) and 1 <= len(segments) <= proposals.shape[1]
    assert 1 <= len(out["instances"]) <= proposals.shape[1] * 3  # (mask, class) pairs

    # SAM's masks named through classify_masks, as COCO RLEs from the package's generator
    sam = predictor.model.proposal_network.sam
    rles = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0,
                                     output_mode="coco_rle").generate(photo)
    named = predictor.classify_masks(photo, [r["segmentation"] for r in rles if r["area"] > 0])
    assert named.class_scores.shape == (len(named), 4) and len(named) >= 1


def test_the_demo_runs_with_sam_proposals(tmp_path):
    spec = importlib.util.spec_from_file_location("maskclip_demo", ROOT / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rc = demo.main(["--config-file", TINY_SAM, "--output", str(tmp_path / "out"), "--vocab", "cup; table"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png") == [
        "astronaut_panoptic.png", "chelsea_panoptic.png", "coffee_panoptic.png", "rocket_panoptic.png"]


def test_sam_weights_load_from_the_checkpoint_path(tmp_path):
    torch.manual_seed(1)
    reference = build_sam("tiny")
    torch.save(reference.state_dict(), tmp_path / "sam_tiny.pth")  # a plain state dict, as SAM's files
    model = build_model(get_maskclip_cfg(TINY_SAM, ["MODEL.MASKCLIP.PROPOSAL_WEIGHTS", str(tmp_path / "sam_tiny.pth")]))
    loaded = model.proposal_network.sam.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    assert not any(p.requires_grad for p in model.proposal_network.parameters())


def test_a_missing_sam_checkpoint_fails_before_anything_loads(monkeypatch):
    loaded = []
    monkeypatch.setattr(maskclip_module, "build_clip_model", lambda *a, **k: loaded.append(a))
    cfg = get_maskclip_cfg(TINY_SAM, ["MODEL.MASKCLIP.SAM.MODEL_TYPE", "vit_b",
                                      "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", "checkpoints/sam_vit_b.pth"])
    with pytest.raises(FileNotFoundError, match="checkpoints/sam_vit_b.pth.*not found") as err:
        build_model(cfg)
    assert SAM_CHECKPOINTS_URL in str(err.value) and "sam_vit_b_01ec64.pth" in str(err.value)
    assert not loaded
    cfg.MODEL.MASKCLIP.SAM.MODEL_TYPE = "vit_x"
    with pytest.raises(ValueError, match="SAM.MODEL_TYPE must be one of"):
        build_model(cfg)


def test_generator_defaults_are_sams_and_configs_name_matching_checkpoints():
    import inspect

    from maskclip_d2.modeling.proposals.sam_proposals import SAM_CHECKPOINT_FILES, generator_kwargs

    defaults = {k: p.default for k, p in inspect.signature(SamAutomaticMaskGenerator).parameters.items()
                if p.default is not inspect.Parameter.empty}
    ours = generator_kwargs(get_maskclip_cfg())
    assert ours == {k: defaults[k] for k in ours}
    configs = sorted((ROOT / "configs" / "sam").glob("*.yaml"))
    assert len(configs) == 4
    for path in configs:
        cfg = get_maskclip_cfg(str(path))
        mc = cfg.MODEL.MASKCLIP
        assert mc.PROPOSAL_NETWORK == "sam" and generator_kwargs(cfg) == ours
        assert mc.PROPOSAL_WEIGHTS.endswith(SAM_CHECKPOINT_FILES[mc.SAM.MODEL_TYPE])
        assert mc.SAM.MODEL_TYPE in path.name


def test_a_checkpoint_trained_on_mask2former_proposals_loads_with_sam_proposals(tmp_path):
    from maskclip_d2.checkpoint import StrictCheckpointer

    # stage 2 as train_net.py saves it: the config names the frozen proposal weights, so the
    # checkpoint holds the RMA weights (and the random tiny CLIP) but not Mask2Former's
    torch.manual_seed(2)
    stage1 = build_model(get_maskclip_cfg(str(ROOT / "configs" / "tiny" / "maskclip_tiny.yaml")))
    torch.save({"model": stage1.proposal_network.network.state_dict()}, tmp_path / "stage1.pth")
    trained = build_model(get_maskclip_cfg(str(ROOT / "configs" / "tiny" / "maskclip_tiny.yaml"),
                                           ["MODEL.MASKCLIP.PROPOSAL_WEIGHTS", str(tmp_path / "stage1.pth")]))
    StrictCheckpointer(trained, str(tmp_path)).save("stage2")
    torch.save(build_sam("tiny").state_dict(), tmp_path / "sam_tiny.pth")

    cfg = get_maskclip_cfg(TINY_SAM, ["MODEL.MASKCLIP.PROPOSAL_WEIGHTS", str(tmp_path / "sam_tiny.pth")])
    torch.manual_seed(3)
    predictor = Predictor(cfg, weights=str(tmp_path / "stage2.pth"))
    ours, theirs = predictor.model.encoder.state_dict(), trained.encoder.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
