"""The "MaskCLIP (MaskRCNN)" row end to end on thin models: stage 1 trains the class-agnostic
Mask R-CNN with train_net.py on panoptic segments (every segment class 0), stage 2 loads its
model_final.pth strictly as MaskCLIP's frozen proposal network. The configs are the shipped
ones (configs/coco/proposals/class_agnostic_mask_rcnn_R50_FPN_1x.yaml and
configs/coco/maskclip_maskrcnn_vitl14_336.yaml) with the same thin-model overrides on both."""
import json
import math
from pathlib import Path

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import paste_masks_in_image
from detectron2.modeling import GeneralizedRCNN, build_model
from detectron2.structures import Boxes, Instances
from torch.nn import functional as F

from helpers.scripts import load_script
from maskclip_d2.checkpoint import CheckpointMismatchError
from maskclip_d2.config import get_maskclip_cfg
from maskclip_d2.data.dataset_mappers import COCOPanopticLSJDatasetMapper
from maskclip_d2.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from maskclip_d2.modeling.proposals.sources import (
    MaskRCNNProposals,
    build_proposal_network,
    paste_soft_masks,
    proposal_rcnn_cfg,
)
from helpers.tiny_datasets import isolated_catalogs  # noqa: F401  (autouse fixture)
from helpers.tiny_datasets import SCENE_SIZE, run_prepare, write_coco_panoptic_scenes

REPO = Path(__file__).resolve().parents[3]
train_net = load_script("train_net.py")

STAGE1 = str(REPO / "configs/coco/proposals/class_agnostic_mask_rcnn_R50_FPN_1x.yaml")
STAGE2 = str(REPO / "configs/coco/maskclip_maskrcnn_vitl14_336.yaml")
TRAIN = "coco_2017_train_panoptic"
NUM_PROPOSALS = 10
VOCABULARY = ["person", "cat", "sky", "grass, lawn"]

pytestmark = pytest.mark.timeout(120)

# The same thin R50-FPN Mask R-CNN in both stages (the architecture keys stay the configs').
THIN = {
    "MODEL.DEVICE": "cpu", "MODEL.WEIGHTS": "",
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 8, "MODEL.RESNETS.RES2_OUT_CHANNELS": 16,
    "MODEL.RESNETS.NUM_GROUPS": 1, "MODEL.RESNETS.WIDTH_PER_GROUP": 4,
    "MODEL.FPN.OUT_CHANNELS": 16,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 32, "MODEL.ROI_MASK_HEAD.CONV_DIM": 16,
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": 32, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN": 50,
    # at most 8 detections for 10 proposal slots: every image has padded slots
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 100, "MODEL.RPN.POST_NMS_TOPK_TEST": 8,
    "DATALOADER.NUM_WORKERS": 0,
}


def as_opts(values):
    return [str(x) for kv in values.items() for x in kv]


def stage1_opts(out_dir, **overrides):
    values = dict(THIN, **{
        "DATASETS.TRAIN": f"('{TRAIN}',)", "DATASETS.TEST": "()",
        "INPUT.IMAGE_SIZE": SCENE_SIZE, "INPUT.MIN_SCALE": 1.0, "INPUT.MAX_SCALE": 1.0,
        "INPUT.RANDOM_FLIP": "none", "SOLVER.IMS_PER_BATCH": 2, "SOLVER.MAX_ITER": 3,
        "SOLVER.CHECKPOINT_PERIOD": 1000, "SEED": 0, "OUTPUT_DIR": str(out_dir),
    })
    values.update(overrides)
    return as_opts(values)


def stage2_cfg(proposal_weights, **overrides):
    """The shipped Mask R-CNN MaskCLIP config, thin proposal network, tiny random CLIP."""
    values = dict(THIN, **{
        "MODEL.CLIP.NAME": "tiny", "MODEL.CLIP.WEIGHTS": "random",
        "MODEL.MASKCLIP.PROPOSAL_WEIGHTS": str(proposal_weights),
        "MODEL.MASKCLIP.NUM_PROPOSALS": NUM_PROPOSALS,
        "MODEL.MASKCLIP.TRAIN_NUM_POINTS": 256,
        "MODEL.MASKCLIP.TEST.OBJECT_MASK_THRESHOLD": 0.0,
        # random weights: keep every detection so that images have some
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0,
        "DATASETS.TRAIN": "()", "DATASETS.TEST": "()",
    })
    values.update(overrides)
    cfg = get_maskclip_cfg(STAGE2, as_opts(values))
    cfg.MODEL.MASKCLIP.VOCABULARY = VOCABULARY
    return cfg


def register_scenes(root):
    write_coco_panoptic_scenes(root, splits=("train",), num_images=3)
    run_prepare("prepare_coco_panoptic", root, "--splits", "train")
    register_all_coco_panoptic(str(root))


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Stage 1 trained by train_net.main for 3 iterations: (output dir, checkpoint path)."""
    datasets, metadata = dict(DatasetCatalog), dict(MetadataCatalog)
    try:
        register_scenes(tmp_path_factory.mktemp("data"))
        out = tmp_path_factory.mktemp("stage1")
        train_net.main(train_net.default_argument_parser().parse_args(
            ["--config-file", STAGE1, *stage1_opts(out)]))
    finally:
        DatasetCatalog.clear()
        DatasetCatalog.update(datasets)
        MetadataCatalog.clear()
        MetadataCatalog.update(metadata)
    return out, out / "model_final.pth"


def image_input(height, width, out_size=None):
    g = torch.Generator().manual_seed(height * 1000 + width)
    x = {"image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)}
    if out_size is not None:
        x["height"], x["width"] = out_size
    return x


# ---- configs -------------------------------------------------------------------------------
def test_stage2_proposal_network_is_stage1s_architecture():
    """Every key that shapes the R-CNN is equal in the stage-1 config and in the proposal
    network MaskCLIP builds from its own config (so the checkpoint loads strictly)."""
    stage1 = get_maskclip_cfg(STAGE1)
    rcnn = proposal_rcnn_cfg(get_maskclip_cfg(STAGE2))
    assert stage1.MODEL.META_ARCHITECTURE == rcnn.MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    for key in ("BACKBONE", "RESNETS", "FPN", "ANCHOR_GENERATOR", "PROPOSAL_GENERATOR", "RPN",
                "ROI_HEADS", "ROI_BOX_HEAD", "ROI_MASK_HEAD", "PIXEL_MEAN", "PIXEL_STD",
                "MASK_ON", "KEYPOINT_ON", "LOAD_PROPOSALS"):
        assert stage1.MODEL[key] == rcnn.MODEL[key], key
    assert stage1.INPUT.FORMAT == rcnn.INPUT.FORMAT == "RGB"
    assert stage1.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert stage1.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK and stage1.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG
    assert get_maskclip_cfg(STAGE2).MODEL.MASKCLIP.PROPOSAL_WEIGHTS == \
        str(Path(stage1.OUTPUT_DIR) / "model_final.pth")
    # Detectron2's 1x schedule, SGD, no evaluation (proposals have no class)
    assert stage1.SOLVER.OPTIMIZER == "SGD" and stage1.SOLVER.BASE_LR == 0.02
    assert (stage1.SOLVER.MAX_ITER, tuple(stage1.SOLVER.STEPS), stage1.SOLVER.IMS_PER_BATCH) == \
        (90000, (60000, 80000), 16)
    assert stage1.DATASETS.TRAIN == (TRAIN,) and stage1.DATASETS.TEST == ()
    assert stage1.TEST.EVAL_PERIOD == 0
    assert stage1.INPUT.DATASET_MAPPER_NAME == "coco_panoptic_lsj_class_agnostic"


# ---- (a) stage 1 -----------------------------------------------------------------------------
def test_class_agnostic_mapper_gives_every_segment_class_0(tmp_path):
    register_scenes(tmp_path)
    record = DatasetCatalog.get(TRAIN)[0]
    cfg = get_maskclip_cfg(STAGE1, stage1_opts(tmp_path / "out"))
    agnostic = COCOPanopticLSJDatasetMapper(cfg, is_train=True, class_agnostic=True)(record)
    classes = COCOPanopticLSJDatasetMapper(cfg, is_train=True)(record)
    a, c = agnostic["instances"], classes["instances"]
    assert len(a) == len(c) == 4 and c.gt_classes.tolist() == [80, 81, 0, 2]
    assert a.gt_classes.tolist() == [0, 0, 0, 0] and a.gt_classes.dtype == torch.int64
    assert torch.equal(a.gt_masks.tensor, c.gt_masks.tensor)
    assert torch.equal(a.gt_boxes.tensor, c.gt_boxes.tensor)

    # train_net's loader uses it for the stage-1 config; unknown names are refused
    batch = next(iter(train_net.Trainer.build_train_loader(cfg)))
    assert len(batch) == 2 and all(x["instances"].gt_classes.eq(0).all() for x in batch)
    cfg.INPUT.DATASET_MAPPER_NAME = "coco_panoptic_lsj_agnostic"
    with pytest.raises(ValueError, match="coco_panoptic_lsj_class_agnostic"):
        train_net.Trainer.build_train_loader(cfg)


def test_train_net_trains_the_class_agnostic_mask_rcnn(stage1):
    out, checkpoint = stage1
    assert checkpoint.exists()
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["iteration"] == 2
    model = saved["model"]
    # one class + background, one box regression, one mask channel
    assert model["roi_heads.box_predictor.cls_score.weight"].shape == (2, 32)
    assert model["roi_heads.box_predictor.bbox_pred.weight"].shape == (4, 32)
    assert model["roi_heads.mask_head.predictor.weight"].shape[0] == 1
    metrics = [json.loads(x) for x in (out / "metrics.json").read_text().splitlines()]
    losses = [m for m in metrics if "loss_mask" in m]
    assert losses
    for m in losses:
        for k in ("loss_mask", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "total_loss"):
            assert math.isfinite(m[k]), k


# ---- (b) stage 2: strict load, frozen, outputs ----------------------------------------------
def check_proposals(logits, objectness, batch, size, mask_logit):
    """(B, Q, S, S) logits, (B, Q) objectness in [0, 1]; slots after an image's detections
    are padding: objectness 0, logits -mask_logit. Returns detections per image."""
    assert logits.shape == (batch, NUM_PROPOSALS, size, size)
    assert objectness.shape == (batch, NUM_PROPOSALS)
    assert torch.isfinite(logits).all() and logits.abs().max() <= mask_logit
    assert ((objectness >= 0) & (objectness <= 1)).all()
    counts = []
    for b in range(batch):
        n = int((objectness[b] > 0).sum())
        assert (objectness[b, n:] == 0).all() and (logits[b, n:] == -mask_logit).all()
        counts.append(n)
    return counts


@torch.no_grad()
def test_maskclip_with_the_stage1_checkpoint(stage1):
    _, checkpoint = stage1
    cfg = stage2_cfg(checkpoint)
    torch.manual_seed(0)
    model = build_model(cfg)
    proposals = model.proposal_network
    assert isinstance(proposals, MaskRCNNProposals)
    network = proposals.network
    assert isinstance(network, GeneralizedRCNN)

    # the checkpoint was loaded, strictly: every weight is stage 1's
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    state = network.state_dict()
    assert state.keys() == saved.keys()
    for k, v in saved.items():
        assert torch.equal(state[k], torch.as_tensor(v)), k

    # frozen: no gradients, eval mode even in training mode, not in the optimizer
    assert not any(p.requires_grad for p in proposals.parameters())
    model.train()
    assert model.training and not network.training
    assert not any(m.training for m in network.modules())
    optimized = {id(p) for g in train_net.Trainer.build_optimizer(cfg, model).param_groups
                 for p in g["params"]}
    assert optimized and not optimized & {id(p) for p in proposals.parameters()}
    model.eval()

    # proposals: images of several sizes, some not multiples of the FPN's 32
    size, mask_logit = model.clip_resolution, cfg.MODEL.MASKCLIP.GT_MASK_LOGIT
    inputs = [image_input(64, 64), image_input(48, 80, out_size=(96, 160)), image_input(70, 50)]
    logits, objectness = proposals(inputs, size)
    counts = check_proposals(logits, objectness, len(inputs), size, mask_logit)
    assert any(counts) and all(n <= 8 for n in counts)

    # they are Detectron2's own masks: thresholded at 0.5 they agree with the network's
    # post-processed detections (pasted at the image size) resized to S x S
    detections = network.inference(inputs, do_postprocess=False)
    for b, (x, det) in enumerate(zip(inputs, detections)):
        if not len(det):
            continue
        h, w = x["image"].shape[-2:]
        assert det.image_size == (h, w)
        pasted = paste_masks_in_image(det.pred_masks[:, 0], det.pred_boxes, (h, w), threshold=-1)
        reference = F.interpolate(pasted[None].float() / 255, (size, size), mode="bilinear",
                                  align_corners=False)[0]
        ours = logits[b, : len(det)].sigmoid()
        assert (ours - reference).abs().mean() < 0.02
        assert torch.allclose(objectness[b, : len(det)], det.scores)

    # MaskCLIP's outputs: Detectron2 formats at the requested size, no NaN
    results = model(inputs)
    for x, result in zip(inputs, results):
        h, w = x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])
        sem_seg = result["sem_seg"]
        assert sem_seg.shape == (len(VOCABULARY), h, w) and torch.isfinite(sem_seg).all()
        seg, segments = result["panoptic_seg"]
        assert seg.shape == (h, w)
        assert set(torch.unique(seg).tolist()) <= {0, *(s["id"] for s in segments)}
        inst = result["instances"]
        assert inst.image_size == (h, w) and inst.pred_masks.shape[1:] == (h, w)
        assert torch.isfinite(inst.scores).all() and torch.isfinite(inst.pred_boxes.tensor).all()


class StubRCNN(torch.nn.Module):
    """Stands for GeneralizedRCNN: returns given detections."""

    def __init__(self, detections):
        super().__init__()
        self.detections = detections
        self.register_buffer("pixel_mean", torch.zeros(3, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def inference(self, batched_inputs, do_postprocess=True):
        assert not do_postprocess
        return self.detections


def detections(image_size, boxes, masks, scores):
    det = Instances(image_size)
    det.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    det.pred_masks = torch.as_tensor(masks, dtype=torch.float32)[:, None]
    det.scores = torch.as_tensor(scores, dtype=torch.float32)
    det.pred_classes = torch.zeros(len(det), dtype=torch.int64)
    return det


def test_proposals_span_the_whole_unpadded_image_and_pad_with_empty_masks():
    """A full mask over the whole image covers all of S x S (the padding to 32 is not part of
    it); over the left half, the left half; no detection: all padding."""
    size, full = 32, torch.ones(2, 28, 28)
    dets = [detections((70, 50), [[0, 0, 50, 70], [0, 0, 25, 70]], full, [0.9, 0.4]),
            detections((64, 96), [], torch.zeros(0, 28, 28), [])]
    logits, objectness = MaskRCNNProposals(StubRCNN(dets), NUM_PROPOSALS, 10.0)(
        [image_input(70, 50), image_input(64, 96)], size)
    counts = check_proposals(logits, objectness, 2, size, 10.0)
    assert counts == [2, 0]
    assert objectness[0, :2].tolist() == pytest.approx([0.9, 0.4])
    assert (logits[0, 0] > 0).all()  # every pixel of the image, borders included
    assert (logits[0, 0, 1:-1, 1:-1] == 10.0).all()
    assert (logits[0, 1, :, : size // 2 - 1] > 0).all() and (logits[0, 1, :, size // 2 + 1:] == -10.0).all()


def test_soft_pasting_is_detectron2s_at_the_image_size():
    """At S = image size, paste_soft_masks is Detectron2's paste_masks_in_image (before its
    uint8 quantisation); at other S, that paste resized with align_corners=False."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 28, 28, generator=g)
    xy = torch.rand(5, 2, generator=g) * torch.tensor([40.0, 30.0])
    boxes = torch.cat([xy, xy + 4 + torch.rand(5, 2, generator=g) * 30], dim=1)
    reference = paste_masks_in_image(masks, Boxes(boxes), (48, 64), threshold=-1).float() / 255
    ours = paste_soft_masks(masks, boxes, (48, 64), 48)  # S x S = 48 x 48 over a 48 x 64 image
    resized = F.interpolate(reference[None], (48, 48), mode="bilinear", align_corners=False)[0]
    assert (ours - resized).abs().mean() < 0.01
    square = paste_masks_in_image(masks, Boxes(boxes), (64, 64), threshold=-1).float() / 255
    assert (paste_soft_masks(masks, boxes, (64, 64), 64) - square).abs().max() <= 1 / 255 + 1e-6


# ---- (c) wrong checkpoints -------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    # Detectron2's model-zoo COCO Mask R-CNN: 80 classes
    ({"MODEL.ROI_HEADS.NUM_CLASSES": 80, "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
      "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False},
     "of another shape: roi_heads.box_predictor"),
    # a Faster R-CNN (no mask head)
    ({"MODEL.MASK_ON": False}, "missing from the checkpoint: roi_heads.mask_head"),
])
def test_a_proposal_checkpoint_of_another_architecture_is_refused(tmp_path, change, message):
    cfg = get_maskclip_cfg(STAGE1, stage1_opts(tmp_path, **change))
    path = tmp_path / "wrong.pth"
    torch.save({"model": GeneralizedRCNN(cfg).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError, match=r"does not match the model \(GeneralizedRCNN\)") as e:
        build_proposal_network(stage2_cfg(path))
    assert message in str(e.value)
