#!/usr/bin/env python
"""MaskCLIP learns end to end in a synthetic open-vocabulary world, on a CPU, and is measured
the paper's way (base classes for training, novel classes at test time, PQ / mIoU / AP).

    python tools/synthetic_world.py --scale ci --output out/

Phases (each a subprocess, at most --jobs at once, one thread each; logs in OUTPUT/logs/):

1. world: the scenes, written in COCO panoptic format under OUTPUT/datasets/synthetic_world
   (registered as synthetic_world_{train,val_all,val_base,val_novel}; the train split
   annotates base classes only);
2. clip: a tiny CLIP pre-trained contrastively on captioned scenes of every concept
   (maskclip_d2/synthetic_world/clip_pretraining.py);
3. stage1: the class-agnostic Mask2Former, ``train_net.py`` with
   configs/synthetic/class_agnostic_mask2former.yaml; its mask recall@0.5 is measured with
   ``train_net.py --eval-only`` (and that of the untrained network, for comparison);
4. stage2: MaskCLIP's RMA trained on the base classes, ``train_net.py`` with
   configs/synthetic/maskclip_rma.yaml;
5. evaluation, ``train_net.py --eval-only`` with Detectron2's evaluators on val_all, val_base
   and val_novel (same images, all classes in the vocabulary, only that split's classes
   annotated) for the four modes: baseline (CLIP Baseline), mask_tokens (MaskCLIP w/o RMA),
   rma (MaskCLIP), gt_masks (ground-truth masks classified by mask class tokens).

Writes OUTPUT/results.json: per mode and split PQ, mIoU, AP; proposal_recall_50 per split
(trained and untrained stage 1); CLIP zero-shot accuracy; the stage-2 loss curve; wall-clock
and CPU seconds per phase. ``--break`` deliberately breaks the pipeline (to show that the
tests catch it): shuffle_labels (random training labels and captions), random_clip (CLIP not
loaded: random weights), vocab_offset (class names shifted by one).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskclip_d2.synthetic_world.world import write_world  # noqa: E402
from maskclip_d2.utils import atomic_write  # noqa: E402

SCALES = {
    # images, CLIP pre-training steps, stage-1 and stage-2 iterations (batch 8)
    "ci": {"num_train": 400, "num_val": 30, "clip_steps": 120, "stage1_iters": 300, "stage2_iters": 80},
    "full": {"num_train": 1200, "num_val": 100, "clip_steps": 240, "stage1_iters": 900, "stage2_iters": 250},
}
MODES = {  # mode -> config; what MODEL.WEIGHTS it evaluates
    "baseline": "configs/synthetic/clip_baseline.yaml",
    "mask_tokens": "configs/synthetic/maskclip_mask_tokens.yaml",
    "rma": "configs/synthetic/maskclip_rma.yaml",
    "gt_masks": "configs/synthetic/maskclip_gt_masks.yaml",
}
SPLITS = {"all": "synthetic_world_val_all", "base": "synthetic_world_val_base",
          "novel": "synthetic_world_val_novel"}
BREAKS = ("shuffle_labels", "random_clip", "vocab_offset")
STAGE1_CONFIG = "configs/synthetic/class_agnostic_mask2former.yaml"


class Job:
    def __init__(self, name, argv, deps=(), log=None):
        self.name, self.argv, self.deps, self.log = name, [str(a) for a in argv], set(deps), log
        self.process = None
        self.start = self.wall = self.cpu = None
        self.returncode = None


def build_jobs(out: Path, scale: dict, broken: str):
    python = sys.executable
    train_net = str(REPO / "train_net.py")
    clip_weights = out / "clip" / "synthetic_clip.pth"
    stage1 = out / "stage1" / "model_final.pth"
    clip_opts = ["MODEL.CLIP.WEIGHTS", "random" if broken == "random_clip" else clip_weights,
                 "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", stage1]
    clip_dep = () if broken == "random_clip" else ("clip",)
    logs = out / "logs"
    jobs = []
    if broken != "random_clip":
        argv = [python, "-m", "maskclip_d2.synthetic_world.clip_pretraining", "--output", clip_weights,
                "--steps", scale["clip_steps"]]
        if broken == "shuffle_labels":
            argv.append("--shuffle-captions")
        jobs.append(Job("clip", argv))
    jobs.append(Job("stage1", [python, train_net, "--config-file", STAGE1_CONFIG,
                               "SOLVER.MAX_ITER", scale["stage1_iters"], "DATASETS.TEST", "()",
                               "OUTPUT_DIR", out / "stage1"]))
    jobs.append(Job("stage1_untrained_eval", [python, train_net, "--config-file", STAGE1_CONFIG,
                                              "--eval-only", "MODEL.WEIGHTS", "",
                                              "OUTPUT_DIR", out / "stage1_untrained_eval"]))
    jobs.append(Job("stage1_eval", [python, train_net, "--config-file", STAGE1_CONFIG, "--eval-only",
                                    "MODEL.WEIGHTS", stage1, "OUTPUT_DIR", out / "stage1_eval"],
                    deps=["stage1"]))
    jobs.append(Job("stage2", [python, train_net, "--config-file", MODES["rma"], "MODEL.WEIGHTS", "",
                               "SOLVER.MAX_ITER", scale["stage2_iters"], "DATASETS.TEST", "()",
                               *clip_opts, "OUTPUT_DIR", out / "stage2"],
                    deps=["stage1", *clip_dep]))
    for mode in ("gt_masks", "mask_tokens", "baseline", "rma"):
        opts = list(clip_opts)
        deps = ["stage1", *clip_dep]
        if mode == "gt_masks":
            opts, deps = opts[:2], list(clip_dep)
        if mode == "rma":
            opts += ["MODEL.WEIGHTS", out / "stage2" / "model_final.pth"]
            deps = ["stage2"]
        jobs.append(Job(f"eval_{mode}", [python, train_net, "--config-file", MODES[mode], "--eval-only",
                                         *opts, "OUTPUT_DIR", out / "eval" / mode], deps=deps))
    for job in jobs:
        job.log = logs / f"{job.name}.log"
    return jobs


def last_progress(log: Path) -> str:
    """The last line of a log that says how far a phase got."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - 8000))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if "iter:" in line:
            return "iter " + line.split("iter:")[1].split()[0] + ", total_loss " + \
                (line.split("total_loss:")[1].split()[0] if "total_loss:" in line else "?")
        if "CLIP pre-training: step" in line:
            return line.split("CLIP pre-training: ")[1]
        if "Inference done" in line or "Start inference" in line:
            return line.split("]: ")[-1][:80]
    return ""


def run_jobs(jobs, max_parallel: int, env: dict, started: float, heartbeat: float = 15.0):
    """Runs the jobs, dependencies first, at most ``max_parallel`` at once; prints progress.
    Returns the jobs; raises RuntimeError naming the log of the first that failed."""
    pending = list(jobs)
    running = []
    done = {}
    last_beat = time.time()

    def stamp():
        return f"[{time.time() - started:6.0f}s]"

    while pending or running:
        while len(running) < max_parallel:
            ready = [j for j in pending if j.deps <= set(done)]
            if not ready:
                break
            job = ready[0]
            pending.remove(job)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            log = open(job.log, "w")
            job.start = time.time()
            job.process = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            log.close()
            running.append(job)
            print(f"{stamp()} started  {job.name}", flush=True)
        if not running:
            raise RuntimeError(f"jobs {[j.name for j in pending]} wait for jobs that never ran")
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.5)
            if time.time() - last_beat >= heartbeat:
                last_beat = time.time()
                print(f"{stamp()} running  " + "; ".join(
                    f"{j.name}: {last_progress(j.log) or 'starting'}" for j in running), flush=True)
            continue
        job = next((j for j in running if j.process.pid == pid), None)
        if job is None:
            continue
        running.remove(job)
        job.returncode = os.waitstatus_to_exitcode(status)
        job.process.returncode = job.returncode
        job.wall = time.time() - job.start
        # the child and every descendant it waited for (e.g. the PQ evaluator's workers)
        job.cpu = usage.ru_utime + usage.ru_stime
        if job.returncode != 0:
            for other in running:
                other.process.kill()
                other.process.wait()
            tail = "".join(open(job.log, errors="replace").readlines()[-25:])
            raise RuntimeError(f"phase {job.name} failed (exit {job.returncode}); its log {job.log} ends:\n{tail}")
        done[job.name] = job
        print(f"{stamp()} finished {job.name} in {job.wall:.0f} s wall, {job.cpu:.0f} s CPU", flush=True)
    return jobs


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def collect(out: Path, jobs, scale_name: str, broken, world_seconds, started: float):
    results = {"scale": scale_name, "break": broken, "settings": SCALES[scale_name]}
    modes = {}
    for mode in MODES:
        evaluated = read_json(out / "eval" / mode / "eval_results.json")
        modes[mode] = {}
        for split, dataset in SPLITS.items():
            r = evaluated[dataset]
            modes[mode][split] = {
                "PQ": r["panoptic_seg"]["PQ"], "SQ": r["panoptic_seg"]["SQ"], "RQ": r["panoptic_seg"]["RQ"],
                "mIoU": r["sem_seg"]["mIoU"], "AP": r.get("segm", {}).get("AP", float("nan")),
            }
    results["modes"] = modes
    for key, folder in (("proposal_recall_50", "stage1_eval"),
                        ("proposal_recall_50_untrained", "stage1_untrained_eval")):
        evaluated = read_json(out / folder / "eval_results.json")
        results[key] = {split: evaluated[dataset]["proposals"]["recall@0.5"] for split, dataset in SPLITS.items()}
        results[key.replace("recall_50", "mean_best_iou")] = {
            split: evaluated[dataset]["proposals"]["mean_best_IoU"] for split, dataset in SPLITS.items()}
    clip_report = out / "clip" / "synthetic_clip.pth.json"
    if clip_report.exists():
        results["clip_zero_shot_accuracy"] = read_json(clip_report)["zero_shot_accuracy"]
    losses = []
    with open(out / "stage2" / "metrics.json") as f:
        for line in f:
            record = json.loads(line)
            if "total_loss" in record:
                losses.append([record["iteration"], record["total_loss"]])
    results["stage2_total_loss"] = losses
    seconds = {"world": {"wall": world_seconds[0], "cpu": world_seconds[1]}}
    seconds.update({j.name: {"wall": round(j.wall, 1), "cpu": round(j.cpu, 1)} for j in jobs})
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds["total"] = {
        "wall": round(time.time() - started, 1),
        "cpu": round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1),
    }
    results["seconds"] = seconds
    results["commands"] = {j.name: " ".join(j.argv) for j in jobs}
    return results


def write_demo_inputs(out: Path, count: int = 6, upscale: int = 4):
    """The first ``count`` validation scenes with a novel class, enlarged ``upscale`` times
    (nearest neighbour) so that the demo's drawings are legible: OUTPUT/demo_inputs/*.png."""
    from PIL import Image

    world = out / "datasets" / "synthetic_world"
    panoptic = read_json(world / "panoptic_val_all.json")
    novel = {c["id"] for c in panoptic["categories"] if c["novel"]}
    folder = out / "demo_inputs"
    folder.mkdir(exist_ok=True)
    chosen = [a for a in panoptic["annotations"] if {s["category_id"] for s in a["segments_info"]} & novel]
    for annotation in chosen[:count]:
        stem = Path(annotation["file_name"]).stem
        image = Image.open(world / "images" / "val" / f"{stem}.jpg").convert("RGB")
        image.resize((image.width * upscale, image.height * upscale), Image.NEAREST).save(
            folder / f"val_{stem}.png")


def format_table(results) -> str:
    lines = ["| mode | PQ all | PQ base | PQ novel | mIoU all | mIoU base | mIoU novel | AP all | AP base | AP novel |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode, splits in results["modes"].items():
        cells = [f"{splits[s][m]:.1f}" for m in ("PQ", "mIoU", "AP") for s in ("all", "base", "novel")]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="ci")
    parser.add_argument("--output", required=True, help="folder for the world, models, logs and results.json")
    parser.add_argument("--jobs", type=int, default=2, help="phases run at once (one thread each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world")
    parser.add_argument("--break", dest="broken", choices=BREAKS, default=None,
                        help=argparse.SUPPRESS)  # debugging: prove the tests catch a broken pipeline
    args = parser.parse_args(argv)

    out = Path(args.output).resolve()
    if (out / "results.json").exists():
        raise SystemExit(f"{out / 'results.json'} exists: choose another --output (nothing is overwritten)")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty (an interrupted run?): delete it or choose a new --output folder")
    scale = SCALES[args.scale]
    started, started_cpu = time.time(), time.process_time()
    print(f"synthetic world, scale {args.scale} {scale}" + (f", BROKEN: {args.broken}" if args.broken else "")
          + f" -> {out}", flush=True)
    write_world(str(out / "datasets"), scale["num_train"], scale["num_val"], seed=args.seed,
                shuffle_train_labels=args.broken == "shuffle_labels",
                vocabulary_offset=1 if args.broken == "vocab_offset" else 0)
    world_seconds = (round(time.time() - started, 1), round(time.process_time() - started_cpu, 1))
    print(f"[{world_seconds[0]:6.0f}s] wrote the world: {scale['num_train']} train, {scale['num_val']} val scenes",
          flush=True)

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASKCLIP_CLIP_DOWNLOAD="0",
               DETECTRON2_DATASETS=str(out / "datasets"),
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))
    jobs = run_jobs(build_jobs(out, scale, args.broken), args.jobs, env, started)
    results = collect(out, jobs, args.scale, args.broken, world_seconds, started)
    write_demo_inputs(out)
    with atomic_write(str(out / "results.json")) as tmp, open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    print(f"proposal recall@0.5 (all / base / novel): trained "
          + " / ".join(f"{results['proposal_recall_50'][s]:.1f}" for s in SPLITS)
          + ", untrained " + " / ".join(f"{results['proposal_recall_50_untrained'][s]:.1f}" for s in SPLITS))
    total = results["seconds"]["total"]
    print(f"done in {total['wall']:.0f} s wall, {total['cpu']:.0f} s CPU -> {out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
