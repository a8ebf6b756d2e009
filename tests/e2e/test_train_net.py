"""train_net.py end to end on a tiny COCO-panoptic download (64 x 64 scenes, prepared by the
real script, registered by the real function): train, checkpoint, crash, ``--resume``,
``--eval-only`` with PQ / mIoU / AP, ``--num-gpus 2`` on CPU, and GT-mask mode scoring 100."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from helpers.scripts import load_script
from maskclip_d2.data.datasets.register_coco_panoptic import register_all_coco_panoptic
from maskclip_d2.modeling import build_clip_model
from helpers.tiny_datasets import isolated_catalogs  # noqa: F401  (autouse fixture)
from helpers.tiny_datasets import SCENE_SIZE, run_prepare, write_coco_panoptic_scenes

REPO = Path(__file__).resolve().parents[2]
train_net = load_script("train_net.py")
from maskclip_d2.modeling.clip.text_encoder import TEXT_TOWER

TINY = str(REPO / "configs/tiny/maskclip_tiny.yaml")
TRAIN, TEST = "coco_2017_train_panoptic", "coco_2017_val_panoptic_with_sem_seg"

pytestmark = pytest.mark.timeout(300)


def write_scenes(root, train_images=3, val_images=3):
    write_coco_panoptic_scenes(root, splits=("train",), num_images=train_images)
    write_coco_panoptic_scenes(root, splits=("val",), num_images=val_images)
    run_prepare("prepare_coco_panoptic", root)
    return root


@pytest.fixture
def scenes(tmp_path):
    root = write_scenes(tmp_path / "data")
    register_all_coco_panoptic(str(root))
    return root


def opts(out_dir, **overrides):
    """Command-line config overrides: the tiny config on the 64 x 64 scenes, no augmentation
    randomness (no flip, scale 1), evaluation only where a test asks for it."""
    values = {
        "DATASETS.TRAIN": f"('{TRAIN}',)", "DATASETS.TEST": "()",
        "INPUT.IMAGE_SIZE": SCENE_SIZE, "INPUT.MIN_SCALE": 1.0, "INPUT.MAX_SCALE": 1.0,
        "INPUT.RANDOM_FLIP": "none",
        "INPUT.MIN_SIZE_TEST": SCENE_SIZE, "INPUT.MAX_SIZE_TEST": SCENE_SIZE,
        "SOLVER.IMS_PER_BATCH": 2, "SEED": 0, "OUTPUT_DIR": str(out_dir),
    }
    values.update(overrides)
    return [str(x) for kv in values.items() for x in kv]


def run_main(*argv):
    return train_net.main(train_net.default_argument_parser().parse_args(
        ["--config-file", TINY, *argv]))


class Killed(Exception):
    pass


class KillAfter(HookBase):
    """Raises after iteration ``iteration`` finished (after the checkpointer ran): the
    process dies the way a killed job does, without writing a final checkpoint."""

    def __init__(self, iteration):
        self.iteration = iteration

    def after_step(self):
        if self.trainer.iter == self.iteration:
            raise Killed(f"killed after iteration {self.iteration}")


class RecordIterations(HookBase):
    def __init__(self, record):
        self.record = record

    def before_step(self):
        self.record.append(self.trainer.iter)


TRAINER_BUILD_HOOKS = train_net.Trainer.build_hooks


def with_hooks(monkeypatch, *extra):
    """Trainer.build_hooks returns its hooks (Detectron2's) and then ``extra`` (replacing
    earlier calls' extras)."""
    monkeypatch.setattr(train_net.Trainer, "build_hooks",
                        lambda self: TRAINER_BUILD_HOOKS(self) + list(extra))


def trainable_state(model):
    model = model.module if hasattr(model, "module") else model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for k in expected:
        assert torch.equal(actual[k].cpu(), expected[k].cpu()), k


def optimizer_tensors(state_dict):
    """{(param index, key): value} of an optimizer state dict (exp_avg, exp_avg_sq, step)."""
    return {(i, k): torch.as_tensor(v).clone() for i, s in state_dict["state"].items()
            for k, v in s.items()}


# ---- 1. train, checkpoint, crash, resume, eval-only ---------------------------------------
def test_train_checkpoint_kill_resume_then_eval_only_gives_pq_miou_ap(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # Run 1: checkpoints after iterations 1 and 3 of 6; killed after iteration 2.
    with_hooks(monkeypatch, KillAfter(2))
    with pytest.raises(Killed):
        run_main(*opts(out, **{"SOLVER.MAX_ITER": 6, "SOLVER.CHECKPOINT_PERIOD": 2}))
    assert (out / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists()
    checkpoint = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert checkpoint["iteration"] == 1

    # Run 2: --resume starts at iteration 2 with the checkpoint's weights, optimizer and LR
    # scheduler, and finishes.
    restored, iterations = {}, []

    def spy(self, resume=True):
        resume_or_load(self, resume)
        restored.update(start_iter=self.start_iter, model=trainable_state(self.model),
                        optimizer=copy.deepcopy(self.optimizer.state_dict()),
                        scheduler=copy.deepcopy(self.scheduler.state_dict()))

    resume_or_load = train_net.Trainer.resume_or_load
    monkeypatch.setattr(train_net.Trainer, "resume_or_load", spy)
    with_hooks(monkeypatch, RecordIterations(iterations))
    run_main("--resume", *opts(out, **{"SOLVER.MAX_ITER": 4, "SOLVER.CHECKPOINT_PERIOD": 2}))
    assert restored["start_iter"] == 2 and iterations == [2, 3]
    assert_state_equal(restored["model"], checkpoint["model"])
    saved = checkpoint["trainer"]["_trainer"]["optimizer"]
    assert optimizer_tensors(restored["optimizer"]).keys() == optimizer_tensors(saved).keys()
    for key, value in optimizer_tensors(saved).items():
        assert torch.equal(optimizer_tensors(restored["optimizer"])[key], value), key
    assert len(optimizer_tensors(saved)) > 0  # AdamW moments of the RMA weights
    scheduler = checkpoint["trainer"]["hooks"]["LRScheduler"]
    assert restored["scheduler"]["last_epoch"] == scheduler["last_epoch"] == 2
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    trained = [k for k in final["model"] if "rma" in k]
    assert trained and any(not torch.equal(final["model"][k], checkpoint["model"][k]) for k in trained)

    # --eval-only on the final checkpoint: PQ, mIoU and AP through Detectron2's evaluators.
    # The test vocabulary is embedded first, then CLIP's text tower is freed (shape-only).
    tested = {}
    test = train_net.Trainer.test
    monkeypatch.setattr(train_net.Trainer, "test", classmethod(
        lambda cls, cfg, model, evaluators=None: tested.setdefault("model", trainable_state(model))
        and test(cfg, model, evaluators)))
    results = run_main("--eval-only", *opts(out, **{"DATASETS.TEST": f"('{TEST}',)",
                                                    "MODEL.WEIGHTS": out / "model_final.pth"}))
    released = {k for k, v in tested["model"].items() if v.is_meta}
    assert released == {k for k in final["model"] if k.startswith("text_encoder.")}
    assert_state_equal({k: v for k, v in tested["model"].items() if k not in released},
                       {k: v for k, v in final["model"].items() if k not in released})
    figures = {"PQ": results["panoptic_seg"]["PQ"], "mIoU": results["sem_seg"]["mIoU"],
               "AP": results["segm"]["AP"]}
    print(f"\n--eval-only after 4 iterations (random tiny CLIP): {figures}")
    for name, value in figures.items():
        assert math.isfinite(value) and 0 <= value <= 100, name
    assert (out / "inference" / "coco_instances_results.json").exists()


def test_checkpoints_without_clip_resume_exactly_with_clip_from_the_config(scenes, tmp_path, monkeypatch):
    """With MODEL.CLIP.WEIGHTS naming a file, checkpoints hold no CLIP weights, and --resume
    restores the trained weights, CLIP's from the file and the optimizer exactly."""
    torch.manual_seed(1)
    clip_state = build_clip_model("tiny", "random").state_dict()
    torch.save(clip_state, tmp_path / "clip.pt")
    out = tmp_path / "out"
    clip_opts = {"MODEL.CLIP.WEIGHTS": tmp_path / "clip.pt"}
    run_main(*opts(out, **clip_opts, **{"SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1}))
    saved = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert saved["iteration"] == 1
    assert any("rma" in k for k in saved["model"])
    assert not any(k.startswith(("encoder.visual.", "text_encoder.")) for k in saved["model"])

    restored, iterations = {}, []

    def spy(self, resume=True):
        resume_or_load(self, resume)
        restored.update(model=trainable_state(self.model), optimizer=copy.deepcopy(self.optimizer.state_dict()))

    resume_or_load = train_net.Trainer.resume_or_load
    monkeypatch.setattr(train_net.Trainer, "resume_or_load", spy)
    with_hooks(monkeypatch, RecordIterations(iterations))
    run_main("--resume", *opts(out, **clip_opts, **{"SOLVER.MAX_ITER": 3, "SOLVER.CHECKPOINT_PERIOD": 1}))
    assert iterations == [2]
    clip_keys = {f"encoder.{k}" if k.startswith("visual.") else f"text_encoder.{k}": v
                 for k, v in clip_state.items() if k.startswith(("visual.", *TEXT_TOWER))}
    assert_state_equal(restored["model"], {**saved["model"], **clip_keys})
    expected = optimizer_tensors(saved["trainer"]["_trainer"]["optimizer"])
    assert expected and optimizer_tensors(restored["optimizer"]).keys() == expected.keys()
    assert all(torch.equal(optimizer_tensors(restored["optimizer"])[k], v) for k, v in expected.items())


# ---- 2. --num-gpus 2 on CPU ----------------------------------------------------------------
def first_total_loss(out_dir):
    lines = [json.loads(x) for x in (out_dir / "metrics.json").read_text().splitlines()]
    return next(x["total_loss"] for x in lines if x["iteration"] == 0)


def test_two_processes_give_the_loss_of_one_on_the_same_total_batch(tmp_path):
    """`train_net.py --num-gpus 2` (2 CPU processes, GLOO) with 1 image each against one
    process with both images: the first iteration's total loss agrees (the criterion averages
    over all workers' masks). Command-line runs, so registration comes from
    DETECTRON2_DATASETS as in real use."""
    root = write_scenes(tmp_path / "data", train_images=2, val_images=1)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    losses = {}
    for gpus, batch in ((1, 2), (2, 2)):
        out = tmp_path / f"out{gpus}"
        cmd = [sys.executable, str(REPO / "train_net.py"), "--num-gpus", str(gpus),
               "--config-file", TINY,
               *opts(out, **{"SOLVER.MAX_ITER": 1, "SOLVER.IMS_PER_BATCH": batch,
                             "MODEL.MASKCLIP.TRAIN_NUM_POINTS": SCENE_SIZE * SCENE_SIZE})]
        run = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert run.returncode == 0, run.stderr[-4000:]
        losses[gpus] = first_total_loss(out)
        assert (out / "model_final.pth").exists()
    print(f"\nfirst total loss: 1 process x 2 images {losses[1]:.5f}, "
          f"2 processes x 1 image {losses[2]:.5f}")
    assert losses[2] == pytest.approx(losses[1], rel=0.01)


# ---- 3 + 5. GT masks as proposals: exact masks, 100 with matching embeddings ---------------
def gt_cfg(out_dir):
    return train_net.get_maskclip_cfg(TINY, opts(out_dir, **{
        "DATASETS.TEST": f"('{TEST}',)", "MODEL.MASKCLIP.PROPOSAL_NETWORK": "gt"}))


@torch.no_grad()
def test_gt_masks_are_the_output_and_matching_embeddings_score_100(scenes, tmp_path):
    cfg = gt_cfg(tmp_path / "out")
    torch.manual_seed(0)
    model = train_net.Trainer.build_model(cfg).eval()
    metadata = MetadataCatalog.get(TEST)
    model.set_vocabulary_from_metadata(metadata)
    inputs = [x for batch in train_net.Trainer.build_test_loader(cfg, TEST) for x in batch]
    records = {r["image_id"]: r for r in DatasetCatalog.get(TEST)}
    assert len(inputs) == 3 and all("instances" in x for x in inputs)

    # Text embeddings built to match: each class's embedding is the mean mask feature of its
    # ground-truth segments (every scene has the same four classes).
    features = model.encoder(model.clip_images(inputs),
                             model.proposal_network(inputs, model.clip_resolution)[0])["features"]
    classes = torch.stack([x["instances"].gt_classes for x in inputs])  # (B, 4)
    present = classes[0].tolist()
    assert all(sorted(c.tolist()) == sorted(present) for c in classes)
    embeddings = torch.stack([
        torch.nn.functional.normalize(features[classes == c], dim=-1).mean(0) for c in present])
    model.text_encoder.set_class_embeddings([model.vocabulary[c] for c in present], embeddings)

    outputs = model(inputs)
    for x, y in zip(inputs, outputs):
        # panoptic: one segment per ground-truth segment, exactly its pixels and class
        seg, segments = y["panoptic_seg"]
        gt = x["instances"]
        assert len(segments) == len(gt)
        for mask, label in zip(gt.gt_masks.tensor, gt.gt_classes.tolist()):
            (segment,) = [s for s in segments if torch.equal(seg == s["id"], mask)]
            assert segment["category_id"] == label
            assert segment["isthing"] == (label in metadata.thing_dataset_id_to_contiguous_id.values())
        # semantic: the ground-truth label of every pixel
        sem = np.asarray(Image.open(records[x["image_id"]]["sem_seg_file_name"]))
        assert (y["sem_seg"].argmax(0).numpy() == sem).all()
        # instances: the best-scored ones are the ground-truth things, masks equal
        inst = y["instances"]
        thing_ids = set(metadata.thing_dataset_id_to_contiguous_id.values())
        assert set(inst.pred_classes.tolist()) <= thing_ids
        things = [(m, c) for m, c in zip(gt.gt_masks.tensor, gt.gt_classes.tolist()) if c in thing_ids]
        top = inst[inst.scores.argsort(descending=True)[: len(things)]]
        for mask, label in things:
            assert any(torch.equal(m, mask) and c == label
                       for m, c in zip(top.pred_masks, top.pred_classes.tolist()))
        # Detectron2's Visualizer draws all three with the dataset metadata
        image = x["image"].permute(1, 2, 0).numpy()
        for draw in (lambda v: v.draw_sem_seg(y["sem_seg"].argmax(0)),
                     lambda v: v.draw_panoptic_seg(seg, segments),
                     lambda v: v.draw_instance_predictions(inst)):
            drawn = draw(Visualizer(image, metadata, instance_mode=ColorMode.IMAGE)).get_image()
            assert drawn.shape == (SCENE_SIZE, SCENE_SIZE, 3)

    results = train_net.Trainer.test(cfg, model)
    figures = {"PQ": results["panoptic_seg"]["PQ"], "mIoU": results["sem_seg"]["mIoU"],
               "AP": results["segm"]["AP"]}
    print(f"\nGT masks + matching embeddings: {figures}")
    assert figures == pytest.approx({"PQ": 100.0, "mIoU": 100.0, "AP": 100.0})


def test_gt_proposals_need_a_panoptic_test_dataset(scenes, tmp_path):
    cfg = gt_cfg(tmp_path / "out")
    MetadataCatalog.get("maskclip_test_semantic_only").set(evaluator_type="sem_seg")
    with pytest.raises(ValueError, match="panoptic"):
        train_net.Trainer.build_test_loader(cfg, "maskclip_test_semantic_only")


# ---- training loads checkpoints as strictly as evaluation ------------------------------------
def test_training_refuses_a_checkpoint_that_does_not_match_the_model(scenes, tmp_path):
    from maskclip_d2.checkpoint import CheckpointMismatchError

    out = tmp_path / "out"
    cfg = train_net.get_maskclip_cfg(TINY, opts(out))
    model = train_net.Trainer.build_model(cfg)
    state = {k: v for k, v in model.state_dict().items() if "rma" not in k}  # RMA weights lost
    torch.save({"model": state}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint: .*rma"):
        run_main(*opts(out, **{"SOLVER.MAX_ITER": 1, "MODEL.WEIGHTS": tmp_path / "other.pth"}))
    assert not (out / "model_final.pth").exists()


# ---- several machines: two processes, one per "machine", over TCP ----------------------------
def free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(900)
def test_two_machines_train_and_resume(tmp_path):
    """`train_net.py --num-machines 2 --machine-rank {0,1} --dist-url tcp://127.0.0.1:PORT`,
    as one would start it on two hosts (here both on this one, GLOO), sharing OUTPUT_DIR:
    trains, checkpoints, and with --resume both machines continue from the checkpoint. A
    machine that does not see the shared OUTPUT_DIR is an error, not a hang."""
    root = write_scenes(tmp_path / "data", train_images=2, val_images=1)
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = tmp_path / "out"

    def on_both_machines(max_iter, *flags, outs=(out, out)):
        port = free_port()
        procs = [subprocess.Popen(
            [sys.executable, str(REPO / "train_net.py"), "--num-machines", "2",
             "--machine-rank", str(rank), "--dist-url", f"tcp://127.0.0.1:{port}", *flags,
             "--config-file", TINY,
             *opts(outs[rank], **{"SOLVER.MAX_ITER": max_iter, "SOLVER.CHECKPOINT_PERIOD": 1})],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for rank in (0, 1)]
        try:
            return [(p.communicate(timeout=400)[0], p.returncode) for p in procs]
        finally:  # a hang must not outlive the test
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.communicate()

    for log, rc in on_both_machines(2):
        assert rc == 0, log[-4000:]
    first = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert first["iteration"] == 1
    for log, rc in on_both_machines(4, "--resume"):
        assert rc == 0, log[-4000:]
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert final["iteration"] == 3
    # Both machines resumed at iteration 2 (the global batch is split between them).
    for log in ("log.txt", "log.txt.rank1"):
        text = (out / log).read_text()
        assert "Starting training from iteration 0" in text
        assert "Starting training from iteration 2" in text, log
    trained = [k for k in final["model"] if "rma" in k]
    assert any(not torch.equal(final["model"][k], first["model"][k]) for k in trained)

    # Machine 1 with its own, empty OUTPUT_DIR: both stop before training, saying why.
    for log, rc in on_both_machines(6, "--resume", outs=(out, tmp_path / "elsewhere")):
        assert rc != 0
        assert "would start at different iterations [4, 0]" in log, log[-4000:]
    assert torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 3
