"""DefaultTrainer on CPU: data loading through DatasetMapper, a few SGD steps of a tiny model
registered in META_ARCH_REGISTRY, checkpoints, resume with the LR schedule restored, and the
evaluation hook."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.data.common import MapDataset
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.structures import ImageList
from detectron2.utils.env import seed_all_rng

H, W = 32, 48
NUM_CLASSES = 3
# class k <-> pixel colour (RGB)
COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220]], dtype=np.float64)


@META_ARCH_REGISTRY.register()
class D2AcceptanceTinySegmenter(nn.Module):
    """A per-pixel classifier (one 3x3 conv) trained with cross-entropy against `sem_seg`: the
    loss is a real function of the input image."""

    def __init__(self, cfg):
        super().__init__()
        self.conv = nn.Conv2d(3, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 3, padding=1)
        self.ignore_value = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)

    @property
    def device(self):
        return self.pixel_mean.device

    def forward(self, batched_inputs):
        images = [x["image"].to(self.device).float() for x in batched_inputs]
        images = [(x - self.pixel_mean) / self.pixel_std for x in images]
        images = ImageList.from_tensors(images, 0)
        logits = self.conv(images.tensor)
        if self.training:
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs], 0, self.ignore_value
            ).tensor
            loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value)
            return {"loss_sem_seg": loss}
        return [
            {"sem_seg": logits[i, :, :h, :w]} for i, (h, w) in enumerate(images.image_sizes)
        ]


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return SemSegEvaluator(dataset_name, distributed=False)


class CrashAt(HookBase):
    """Interrupts training after iteration `it` (after that iteration's checkpoint)."""

    def __init__(self, it):
        self.it = it

    def after_step(self):
        if self.trainer.iter == self.it:
            raise RuntimeError(f"simulated crash after iteration {self.it}")


@pytest.fixture
def seg_dataset(tmp_path, register_dataset, helpers):
    """6 images (JPEG and PNG) where each pixel's class is given by its colour, label PNGs."""
    rng = np.random.RandomState(0)
    dicts = []
    for i in range(6):
        labels = np.zeros((H, W), dtype=np.uint8)
        labels[:, rng.randint(8, 20):] = 1
        labels[rng.randint(10, 24):, rng.randint(24, 40):] = 2
        labels[:2, :2] = 255  # ignored
        img = COLOURS[np.minimum(labels, 2)] + rng.normal(0, 15, size=(H, W, 3))
        ext = "jpg" if i % 2 else "png"
        file_name = helpers.write_rgb(tmp_path / f"img{i}.{ext}", np.clip(img, 0, 255))
        label_file = helpers.write_label_png(tmp_path / f"lbl{i}.png", labels)
        dicts.append(
            {"file_name": file_name, "sem_seg_file_name": label_file, "height": H, "width": W,
             "image_id": i}
        )

    def _register(name):
        DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
        MetadataCatalog.get(name).set(
            stuff_classes=["red", "green", "blue"], ignore_label=255, evaluator_type="sem_seg"
        )

    return register_dataset("d2test_train", _register)


def make_cfg(dataset, output_dir, max_iter=6, checkpoint_period=100, steps=(3,)):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "D2AcceptanceTinySegmenter"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.PIXEL_STD = [57.0, 57.0, 57.0]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (H,)
    cfg.INPUT.MAX_SIZE_TRAIN = W
    cfg.INPUT.MIN_SIZE_TEST = H
    cfg.INPUT.MAX_SIZE_TEST = W
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.5
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = steps
    cfg.SOLVER.GAMMA = 0.1
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.WARMUP_FACTOR = 0.5
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_period
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 0
    return cfg


def _fixed_batch(cfg):
    """The whole dataset through the test-time DatasetMapper (no random augmentation)."""
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(d) for d in DatasetCatalog.get(cfg.DATASETS.TRAIN[0])]


def _loss(model, batch):
    model.train()
    with torch.no_grad():
        return float(model(batch)["loss_sem_seg"])


def test_train_loader_runs_dataset_mapper(seg_dataset, tmp_path):
    cfg = make_cfg(seg_dataset, tmp_path)
    seed_all_rng(0)
    loader = build_detection_train_loader(cfg)
    batch = next(iter(loader))
    assert len(batch) == cfg.SOLVER.IMS_PER_BATCH
    for d in batch:
        assert d["image"].dtype == torch.uint8 and d["image"].shape == (3, H, W)
        assert d["sem_seg"].dtype == torch.long and d["sem_seg"].shape == (H, W)
        assert set(torch.unique(d["sem_seg"]).tolist()) <= {0, 1, 2, 255}
        # BGR input format: channel 2 is red; red pixels are class 0
        red = d["image"][2].float()
        assert red[d["sem_seg"] == 0].mean() > 150 > red[d["sem_seg"] == 1].mean()


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_train_loader_maps_coco_instances(tmp_path, register_dataset, helpers, mask_format):
    """COCO json -> register_coco_instances -> DatasetMapper (resize x2 + random flip): the
    instance masks, boxes and classes stay aligned with the image content."""
    import json

    import pycocotools.mask as mask_util

    from detectron2.data.datasets import register_coco_instances

    img = np.full((H, W, 3), 90, dtype=np.uint8)
    polys = {1: [4, 6, 20, 6, 20, 26, 4, 26], 7: [28, 4, 44, 4, 44, 14, 28, 14]}
    colours = {1: (250, 20, 20), 7: (20, 250, 20)}
    anns = []
    for k, (cat, poly) in enumerate(polys.items()):
        x0, y0, x1, y1 = poly[0], poly[1], poly[4], poly[5]
        img[y0:y1, x0:x1] = colours[cat]
        rle = mask_util.merge(mask_util.frPyObjects([poly], H, W))
        anns.append({"id": k + 1, "image_id": 1, "category_id": cat, "iscrowd": 0,
                     "segmentation": [poly], "area": float(mask_util.area(rle)),
                     "bbox": [x0, y0, x1 - x0, y1 - y0]})
    helpers.write_rgb(tmp_path / "a.png", img)
    (tmp_path / "inst.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "red"}, {"id": 7, "name": "green"}],
    }))
    name = register_dataset("d2test_inst", lambda n: register_coco_instances(
        n, {}, str(tmp_path / "inst.json"), str(tmp_path)))
    cfg = make_cfg(name, tmp_path)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.INPUT.MIN_SIZE_TRAIN = (2 * H,)
    cfg.INPUT.MAX_SIZE_TRAIN = 2 * W
    cfg.SOLVER.IMS_PER_BATCH = 8
    seed_all_rng(0)
    batch = next(iter(build_detection_train_loader(cfg)))
    flipped = set()
    for d in batch:
        inst = d["instances"]
        assert d["image"].shape == (3, 2 * H, 2 * W)
        assert inst.image_size == (2 * H, 2 * W)
        assert sorted(inst.gt_classes.tolist()) == [0, 1]  # json ids 1, 7 -> contiguous
        masks = inst.gt_masks
        if mask_format == "bitmask":
            bitmasks = masks.tensor
        else:
            from detectron2.structures import BitMasks

            bitmasks = BitMasks.from_polygon_masks(masks, 2 * H, 2 * W).tensor
        assert bitmasks.shape == (2, 2 * H, 2 * W)
        # areas scale by 4 under the x2 resize (flip-invariant)
        areas = {c: int(m.sum()) for c, m in zip(inst.gt_classes.tolist(), bitmasks)}
        assert areas == {0: 4 * 16 * 20, 1: 4 * 16 * 10}
        # boxes enclose the masks
        for box, m in zip(inst.gt_boxes.tensor, bitmasks):
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert box.tolist() == pytest.approx(
                [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1],
                abs=1.0)
        # the image under each mask has the instance's colour (BGR: red is channel 2)
        image = d["image"].float()
        for c, m in zip(inst.gt_classes.tolist(), bitmasks):
            ch = 2 if c == 0 else 1
            assert image[ch][m].mean() > 200 and image[0][m].mean() < 60
        flipped.add(bool(bitmasks[inst.gt_classes == 0][0][:, : W].sum() == 0))
    assert flipped == {False, True}  # RandomFlip: both outcomes occur in this seeded batch


def test_default_trainer_trains_and_writes_model_final(seg_dataset, tmp_path):
    seed_all_rng(0)
    cfg = make_cfg(seg_dataset, tmp_path / "run", max_iter=8, steps=(6,))
    cfg.DATASETS.TEST = (seg_dataset,)  # EvalHook after the last iteration
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    batch = _fixed_batch(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    loss_before = _loss(trainer.model, batch)

    trainer.train()

    assert trainer.iter == cfg.SOLVER.MAX_ITER  # v0.6: set to max_iter when training completes
    after = trainer.model.state_dict()
    assert not torch.equal(before["conv.weight"], after["conv.weight"])
    loss_after = _loss(trainer.model, batch)
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == cfg.SOLVER.MAX_ITER and all(np.isfinite(losses))

    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(final)
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))
    # the saved weights are the trained ones
    reloaded = build_model(cfg)
    DetectionCheckpointer(reloaded).load(final)
    for k, v in after.items():
        assert torch.equal(reloaded.state_dict()[k], v), k

    # EvalHook ran SemSegEvaluator through inference_on_dataset on the trained model
    res = trainer._last_eval_results["sem_seg"]
    assert res["pACC"] > 90.0, res


def _crash_and_resume(dataset, output_dir):
    """6-iteration schedule (warmup over 2 iterations, x0.1 from iteration 3), checkpoints every
    2 iterations; the first trainer crashes after iteration 3 (0-based), a second trainer
    resumes from the last checkpoint. Returns (cfg, first, second) with `second` not trained."""
    seed_all_rng(0)
    cfg = make_cfg(dataset, output_dir, max_iter=6, checkpoint_period=2, steps=(3,))
    first = Trainer(cfg)
    first.resume_or_load(resume=False)
    first.register_hooks([CrashAt(3)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.train()
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_0000003.pth"))
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    second = Trainer(cfg)
    assert second.scheduler.last_epoch == 0  # a fresh schedule before resuming
    second.resume_or_load(resume=True)
    return cfg, first, second


def test_resume_restores_iteration_and_lr_schedule(seg_dataset, tmp_path):
    # Reference: 6 uninterrupted iterations.
    seed_all_rng(0)
    ref_cfg = make_cfg(seg_dataset, tmp_path / "ref", max_iter=6, steps=(3,))
    ref = Trainer(ref_cfg)
    ref.resume_or_load(resume=False)
    ref.train()
    ref_lrs = {it: lr for lr, it in ref.storage.history("lr").values()}
    assert sorted(ref_lrs) == list(range(6))
    base = ref_cfg.SOLVER.BASE_LR
    assert ref_lrs[0] == pytest.approx(0.5 * base)  # WARMUP_FACTOR
    assert ref_lrs[2] == pytest.approx(base)
    assert ref_lrs[3] == pytest.approx(0.1 * base) and ref_lrs[5] == pytest.approx(0.1 * base)

    cfg, first, second = _crash_and_resume(seg_dataset, tmp_path / "run")
    assert first.scheduler.last_epoch == 4  # 4 iterations (0..3) done
    assert second.start_iter == 4
    assert second.scheduler.last_epoch == 4
    assert second.scheduler.base_lrs == [base]
    for k, v in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[k], v), k

    second.train()
    resumed_lrs = {it: lr for lr, it in second.storage.history("lr").values()}
    assert sorted(resumed_lrs) == [4, 5]
    # after the first resumed step the schedule continues exactly as without interruption
    assert resumed_lrs[5] == pytest.approx(ref_lrs[5])
    assert second.scheduler.last_epoch == 6
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))


# DefaultTrainer checkpoints its inner trainer's optimizer (patch 0006; upstream v0.6 did not).
def test_resume_first_iteration_runs_at_the_scheduled_lr(seg_dataset, tmp_path):
    """The first resumed iteration (4) must use the LR of iteration 4 of the schedule
    (0.1 * BASE_LR), not the schedule's start (warmup: 0.5 * BASE_LR)."""
    cfg, _, second = _crash_and_resume(seg_dataset, tmp_path / "run")
    expected = 0.1 * cfg.SOLVER.BASE_LR
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    second.train()
    resumed_lrs = {it: lr for lr, it in second.storage.history("lr").values()}
    assert resumed_lrs[4] == pytest.approx(expected)


def test_resume_restores_optimizer_momentum(seg_dataset, tmp_path):
    cfg, first, second = _crash_and_resume(seg_dataset, tmp_path / "run")
    saved = torch.load(
        os.path.join(cfg.OUTPUT_DIR, "model_0000003.pth"), map_location="cpu", weights_only=False
    )
    assert "iteration" in saved["trainer"]
    state_first = first.optimizer.state_dict()["state"]
    state_second = second.optimizer.state_dict()["state"]
    assert len(state_first) == 2  # conv weight and bias, SGD momentum buffers
    assert state_second.keys() == state_first.keys()
    for k in state_first:
        assert torch.equal(state_second[k]["momentum_buffer"], state_first[k]["momentum_buffer"])


def test_map_dataset_skips_items_the_mapper_drops():
    """A mapper returning None makes MapDataset retry with other (random) indices; it must only
    ever hand out items from the valid ones."""
    items = list(range(10))
    calls = []

    def mapper(x):
        calls.append(x)
        return None if x % 3 == 0 else {"value": x * 10}

    ds = MapDataset(items, mapper)
    assert len(ds) == 10
    out = [ds[i]["value"] for i in range(10)]
    valid = {x * 10 for x in items if x % 3 != 0}
    assert set(out) <= valid
    # valid indices map to themselves
    assert [out[i] for i in range(10) if i % 3 != 0] == [i * 10 for i in range(10) if i % 3]
    # indices that failed were tried, and dropped from the fallback pool
    assert {0, 3, 6, 9} <= set(calls)
    assert not ({0, 3, 6, 9} & ds._fallback_candidates)
