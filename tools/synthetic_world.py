#!/usr/bin/env python
"""MaskCLIP learns end to end in a synthetic open-vocabulary world, on a CPU, and is measured
the paper's way (base classes for training, novel classes at test time, PQ / mIoU / AP).

    python tools/synthetic_world.py --scale ci --output out/
    python tools/synthetic_world.py --scale ci --seeds 0,1,2 --ablations --output out/   # mean, std, 95% interval

One ``--seed`` drives everything random: the world's scenes, CLIP pre-training, both training
stages (Detectron2's ``SEED``) and the zero-shot test images; the same command gives the same
results.json on the same machine (wall and CPU seconds and the commands go to run.json).
``--image-size 128`` renders 128 px scenes for a 16 x 16 CLIP token grid (8 px patches; the
default 64 px world has 8 x 8).

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
   annotated) for the modes: baseline (CLIP Baseline), mask_tokens (MaskCLIP w/o RMA),
   rma (MaskCLIP), gt_masks (ground-truth masks classified by mask class tokens, training-free)
   and gt_masks_rma (ground-truth masks through the trained RMA: the paper's GT-mask row);
6. with ``--ablations``, the paper's Table 9 in this 4-layer CLIP: stage 2 retrained and
   evaluated with RMA at other layers (rma = every L/4-th layer, here all four).

Writes OUTPUT/results.json: per mode and split PQ, mIoU, AP; proposal_recall_50 per split
(trained and untrained stage 1); CLIP zero-shot accuracy; the stage-2 loss curve; and
OUTPUT/run.json: wall-clock and CPU seconds per phase, the commands. With ``--seeds``, one
such folder per seed (OUTPUT/seed_<s>) and OUTPUT/summary.json: mean, standard deviation and
95% interval (t-distribution) of every figure over the seeds (tools/synthetic_world_tables.py
renders it as the tables of docs/SYNTHETIC_WORLD.md). ``--break`` deliberately breaks the
pipeline (to show that the tests catch it): shuffle_labels (random training labels and
captions), random_clip (CLIP not loaded: random weights), vocab_offset (class names shifted by
one).
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

from maskclip_d2.synthetic_world.analysis import mask_token_view, pixel_confusion  # noqa: E402
from maskclip_d2.synthetic_world.clip_pretraining import SYNTHETIC_CLIP  # noqa: E402
from maskclip_d2.synthetic_world.report import SPLITS, summarize  # noqa: E402
from maskclip_d2.synthetic_world.world import CONCEPTS, write_world  # noqa: E402
from maskclip_d2.utils import atomic_write  # noqa: E402

SCALES = {
    # images, CLIP pre-training steps, stage-1 and stage-2 iterations (batch 8); "smoke" only
    # checks that the pipeline runs (and is deterministic): its figures mean nothing
    "smoke": {"num_train": 24, "num_val": 12, "clip_steps": 4, "stage1_iters": 4, "stage2_iters": 3},
    "ci": {"num_train": 400, "num_val": 30, "clip_steps": 120, "stage1_iters": 300, "stage2_iters": 80},
    "full": {"num_train": 1200, "num_val": 100, "clip_steps": 240, "stage1_iters": 900, "stage2_iters": 250},
}
MODES = {  # mode -> config; what MODEL.WEIGHTS it evaluates
    "baseline": "configs/synthetic/clip_baseline.yaml",
    "mask_tokens": "configs/synthetic/maskclip_mask_tokens.yaml",
    "rma": "configs/synthetic/maskclip_rma.yaml",
    "gt_masks": "configs/synthetic/maskclip_gt_masks.yaml",
    "gt_masks_rma": "configs/synthetic/maskclip_gt_masks_rma.yaml",
}
# --ablations: RMA at other layers of the 4-layer CLIP (1-based); "rma" itself has the paper's
# every L/4-th layer, here 1, 2, 3, 4. Table 9's "every k-th vs the last layers" at two layers
# (2, 4 vs 3, 4) and the number of RMA layers (4: 4 layers; 2, 4: 2; 4 alone: 1).
RMA_ABLATIONS = {"rma_every2nd": [2, 4], "rma_last2": [3, 4], "rma_last1": [4]}
BREAKS = ("shuffle_labels", "random_clip", "vocab_offset")
STAGE1_CONFIG = "configs/synthetic/class_agnostic_mask2former.yaml"
NOVEL = {c.name for c in CONCEPTS if c.novel}
CLIP_PATCH_SIZE = SYNTHETIC_CLIP.vision_patch_size
IMAGE_SIZES = (64, 128)
# --proposal-remedy: stage-1 config options of each remedy for novel-class proposals
PROPOSAL_REMEDIES = {"void_unpenalised": ["MODEL.MASK_FORMER.VOID_UNPENALISED_FRACTION", 0.5]}


class Job:
    def __init__(self, name, argv, deps=(), log=None):
        self.name, self.argv, self.deps, self.log = name, [str(a) for a in argv], set(deps), log
        self.process = None
        self.start = self.wall = self.cpu = None
        self.returncode = None


def build_jobs(out: Path, scale: dict, broken: str, seed: int = 0, image_size: int = 64,
               ablations: bool = False, remedy: str = None, clip_weights: Path = None):
    python = sys.executable
    train_net = str(REPO / "train_net.py")
    pretrain_clip = clip_weights is None and broken != "random_clip"
    clip_weights = clip_weights or out / "clip" / "synthetic_clip.pth"
    stage1 = out / "stage1" / "model_final.pth"
    # every train_net.py phase: the seed and the world's image size
    common = ["SEED", seed, "INPUT.IMAGE_SIZE", image_size, "INPUT.MIN_SIZE_TEST", image_size,
              "INPUT.MAX_SIZE_TEST", image_size]
    stage1_opts = common + (PROPOSAL_REMEDIES[remedy] if remedy else [])
    clip_opts = [*common, "MODEL.CLIP.ARCHITECTURE.IMAGE_RESOLUTION", image_size,
                 "MODEL.CLIP.WEIGHTS", "random" if broken == "random_clip" else clip_weights,
                 "MODEL.MASKCLIP.PROPOSAL_WEIGHTS", stage1]
    clip_dep = ("clip",) if pretrain_clip else ()
    logs = out / "logs"
    jobs = []
    if pretrain_clip:
        argv = [python, "-m", "maskclip_d2.synthetic_world.clip_pretraining", "--output", clip_weights,
                "--steps", scale["clip_steps"], "--seed", seed, "--image-size", image_size]
        if broken == "shuffle_labels":
            argv.append("--shuffle-captions")
        jobs.append(Job("clip", argv))
    jobs.append(Job("stage1", [python, train_net, "--config-file", STAGE1_CONFIG, *stage1_opts,
                               "SOLVER.MAX_ITER", scale["stage1_iters"], "DATASETS.TEST", "()",
                               "OUTPUT_DIR", out / "stage1"]))
    jobs.append(Job("stage1_untrained_eval", [python, train_net, "--config-file", STAGE1_CONFIG,
                                              "--eval-only", *stage1_opts, "MODEL.WEIGHTS", "",
                                              "OUTPUT_DIR", out / "stage1_untrained_eval"]))
    jobs.append(Job("stage1_eval", [python, train_net, "--config-file", STAGE1_CONFIG, "--eval-only",
                                    *stage1_opts, "MODEL.WEIGHTS", stage1, "OUTPUT_DIR", out / "stage1_eval"],
                    deps=["stage1"]))
    variants = {"rma": []}
    if ablations:
        variants.update(RMA_ABLATIONS)
    for variant, layers in variants.items():
        stage2 = "stage2" if variant == "rma" else f"stage2_{variant}"
        layer_opts = ["MODEL.MASKCLIP.RMA_LAYERS", f"[{','.join(map(str, layers))}]"] if layers else []
        jobs.append(Job(stage2, [python, train_net, "--config-file", MODES["rma"], "MODEL.WEIGHTS", "",
                                 "SOLVER.MAX_ITER", scale["stage2_iters"], "DATASETS.TEST", "()",
                                 *clip_opts, *layer_opts, "OUTPUT_DIR", out / stage2],
                        deps=["stage1", *clip_dep]))
        if variant != "rma":
            jobs.append(Job(f"eval_{variant}", [python, train_net, "--config-file", MODES["rma"], "--eval-only",
                                                *clip_opts, *layer_opts,
                                                "MODEL.WEIGHTS", out / stage2 / "model_final.pth",
                                                "OUTPUT_DIR", out / "eval" / variant], deps=[stage2]))
    for mode in ("gt_masks", "mask_tokens", "baseline", "rma", "gt_masks_rma"):
        opts = list(clip_opts)
        deps = ["stage1", *clip_dep]
        if mode.startswith("gt_masks"):
            opts, deps = opts[:-2], list(clip_dep)
        if mode in ("rma", "gt_masks_rma"):
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


def _mode_figures(evaluated) -> dict:
    """PQ (things, stuff), SQ, RQ, mIoU, AP per split; the IoU of every class on val_all."""
    figures = {}
    for split, dataset in SPLITS.items():
        r = evaluated[dataset]
        pq = r["panoptic_seg"]
        figures[split] = {
            "PQ": pq["PQ"], "SQ": pq["SQ"], "RQ": pq["RQ"], "PQ_th": pq["PQ_th"], "PQ_st": pq["PQ_st"],
            "mIoU": r["sem_seg"]["mIoU"], "AP": r.get("segm", {}).get("AP", float("nan")),
        }
    figures["class_IoU"] = {c.name: evaluated[SPLITS["all"]]["sem_seg"][f"IoU-{c.name}"] for c in CONCEPTS}
    return figures


def collect(out: Path, settings: dict, clip_weights: Path = None) -> dict:
    """results.json: the figures of a finished run and the settings that made them; nothing
    that changes between two runs of the same command (times and paths go to run.json)."""
    results = dict(settings)
    results["modes"] = {mode: _mode_figures(read_json(out / "eval" / mode / "eval_results.json"))
                        for mode in MODES}
    ablations = {v: _mode_figures(read_json(out / "eval" / v / "eval_results.json"))
                 for v in RMA_ABLATIONS if (out / "eval" / v / "eval_results.json").exists()}
    if ablations:
        results["rma_layer_ablations"] = {"layers": {"rma": "every L/4-th: 1,2,3,4", **{
            v: ",".join(map(str, layers)) for v, layers in RMA_ABLATIONS.items()}}, **ablations}
    for key, folder in (("proposal_recall_50", "stage1_eval"),
                        ("proposal_recall_50_untrained", "stage1_untrained_eval")):
        evaluated = read_json(out / folder / "eval_results.json")
        results[key] = {split: evaluated[dataset]["proposals"]["recall@0.5"] for split, dataset in SPLITS.items()}
        results[key.replace("recall_50", "mean_best_iou")] = {
            split: evaluated[dataset]["proposals"]["mean_best_IoU"] for split, dataset in SPLITS.items()}
    clip_report = Path(f"{clip_weights}.json") if clip_weights else out / "clip" / "synthetic_clip.pth.json"
    if clip_report.exists():
        accuracy = read_json(clip_report)["zero_shot_accuracy"]
        results["clip_zero_shot_accuracy"] = accuracy
        results["clip_zero_shot_accuracy_mean"] = {
            "all": 100 * sum(accuracy.values()) / len(accuracy),
            **{split: 100 * sum(a for name, a in accuracy.items() if (name in NOVEL) == (split == "novel"))
               / sum((name in NOVEL) == (split == "novel") for name in accuracy) for split in ("base", "novel")}}
    world = str(out / "datasets" / "synthetic_world")
    # which class each mode names the pixels of each class (val_all: every class annotated).
    # The predictions file is the last evaluated split's (val_novel): the same predictions as
    # on val_all where proposals come from stage 1; ground-truth proposals there are the novel
    # segments only, so those modes get the novel classes' rows only.
    results["pixel_confusion"] = {
        mode: pixel_confusion(world, str(out / "eval" / mode / "inference" / "sem_seg_predictions.json"),
                              classes=sorted(NOVEL) if mode.startswith("gt_masks") else None)
        for mode in MODES}
    # how much of a ground-truth segment its mask class token sees, on this CLIP grid
    results["mask_token_view"] = mask_token_view(world, "val_all", patch_size=CLIP_PATCH_SIZE)
    losses = []
    with open(out / "stage2" / "metrics.json") as f:
        for line in f:
            record = json.loads(line)
            if "total_loss" in record:
                losses.append([record["iteration"], record["total_loss"]])
    results["stage2_total_loss"] = losses
    return results


def cpu_seconds() -> float:
    """CPU seconds of this process and of every child it waited for, so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_record(out: Path, jobs, world_seconds, started: float, started_cpu: float) -> dict:
    """run.json: wall-clock and CPU seconds per phase and in all (since ``started`` and
    ``started_cpu``), and the commands (paths relative to the repository and to OUTPUT)."""
    seconds = {"world": {"wall": world_seconds[0], "cpu": world_seconds[1]}}
    seconds.update({j.name: {"wall": round(j.wall, 1), "cpu": round(j.cpu, 1)} for j in jobs})
    seconds["total"] = {"wall": round(time.time() - started, 1), "cpu": round(cpu_seconds() - started_cpu, 1)}

    def relative(argument):
        return argument.replace(str(out), "OUTPUT").replace(str(REPO) + os.sep, "")

    return {"seconds": seconds, "commands": {j.name: " ".join(map(relative, j.argv)) for j in jobs}}


def write_demo_inputs(out: Path, count: int = 6, display_size: int = 256):
    """The first ``count`` validation scenes with a novel class, enlarged to ``display_size``
    px (nearest neighbour) so that the demo's drawings are legible: OUTPUT/demo_inputs/*.png."""
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
        upscale = max(1, display_size // image.width)
        image.resize((image.width * upscale, image.height * upscale), Image.NEAREST).save(
            folder / f"val_{stem}.png")


def format_table(results) -> str:
    lines = ["| mode | PQ all | PQ base | PQ novel | mIoU all | mIoU base | mIoU novel | AP all | AP base | AP novel |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = dict(results["modes"])
    rows.update({k: v for k, v in results.get("rma_layer_ablations", {}).items() if k != "layers"})
    for mode, splits in rows.items():
        cells = [f"{splits[s][m]:.1f}" for m in ("PQ", "mIoU", "AP") for s in ("all", "base", "novel")]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def check_output(out: Path, reuse_finished: bool = False) -> bool:
    """True when ``out`` holds a finished run to reuse (only with ``reuse_finished``); an
    error for a folder that holds anything else; False for a new or empty folder."""
    if (out / "results.json").exists():
        if reuse_finished:
            return True
        raise SystemExit(f"{out / 'results.json'} exists: choose another --output (nothing is overwritten)")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty (an interrupted run?): delete it or choose a new --output folder")
    return False


def check_clip_weights(clip_weights: Path, seed: int, image_size: int, steps: int) -> None:
    """A CLIP given with --clip-weights must be the one this run would pre-train."""
    try:
        report = read_json(Path(f"{clip_weights}.json"))
    except (OSError, ValueError) as e:
        raise SystemExit(f"--clip-weights {clip_weights}: cannot read its report {clip_weights}.json ({e}); "
                         "give a synthetic_clip.pth written by tools/synthetic_world.py")
    made = (report.get("seed"), report["architecture"]["image_resolution"], report.get("steps"))
    if made != (seed, image_size, steps) or not clip_weights.is_file():
        raise SystemExit(f"--clip-weights {clip_weights} was pre-trained with (seed, image size, steps) {made}, "
                         f"this run needs {(seed, image_size, steps)}")


def run_study(out: Path, scale_name: str, seed: int, image_size: int, ablations: bool = False,
              remedy: str = None, broken: str = None, jobs: int = 2, clip_weights: Path = None) -> dict:
    """One run of the study into ``out`` (new or empty): writes results.json and run.json.
    ``clip_weights``: the CLIP of an earlier run of the same seed and size, instead of
    pre-training it again (the same weights: pre-training is deterministic)."""
    scale = SCALES[scale_name]
    if clip_weights is not None:
        check_clip_weights(clip_weights, seed, image_size, scale["clip_steps"])
    settings = {"scale": scale_name, "seed": seed, "image_size": image_size,
                "clip_token_grid": image_size // CLIP_PATCH_SIZE, "proposal_remedy": remedy, "break": broken,
                "settings": scale}
    started, started_cpu, started_all_cpu = time.time(), time.process_time(), cpu_seconds()
    print(f"synthetic world, scale {scale_name} {scale}, seed {seed}, {image_size} px"
          + (f", proposal remedy {remedy}" if remedy else "")
          + (f", BROKEN: {broken}" if broken else "") + f" -> {out}", flush=True)
    write_world(str(out / "datasets"), scale["num_train"], scale["num_val"], size=image_size, seed=seed,
                shuffle_train_labels=broken == "shuffle_labels",
                vocabulary_offset=1 if broken == "vocab_offset" else 0)
    world_seconds = (round(time.time() - started, 1), round(time.process_time() - started_cpu, 1))
    print(f"[{world_seconds[0]:6.0f}s] wrote the world: {scale['num_train']} train, {scale['num_val']} val scenes",
          flush=True)

    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASKCLIP_CLIP_DOWNLOAD="0",
               DETECTRON2_DATASETS=str(out / "datasets"),
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p]))
    job_list = run_jobs(build_jobs(out, scale, broken, seed, image_size, ablations, remedy, clip_weights),
                        jobs, env, started)
    results = collect(out, settings, clip_weights)
    write_demo_inputs(out)
    record = run_record(out, job_list, world_seconds, started, started_all_cpu)
    with atomic_write(str(out / "run.json")) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    with atomic_write(str(out / "results.json")) as tmp, open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    print("proposal recall@0.5 (all / base / novel): trained "
          + " / ".join(f"{results['proposal_recall_50'][s]:.1f}" for s in SPLITS)
          + ", untrained " + " / ".join(f"{results['proposal_recall_50_untrained'][s]:.1f}" for s in SPLITS))
    total = record["seconds"]["total"]
    print(f"done in {total['wall']:.0f} s wall, {total['cpu']:.0f} s CPU -> {out / 'results.json'}")
    return results


def parse_seeds(text: str):
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds wants comma-separated integers, got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds wants distinct seeds (two or more for intervals), got {text!r}")
    return seeds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="ci")
    parser.add_argument("--output", required=True, help="folder for the world, models, logs and results.json")
    parser.add_argument("--jobs", type=int, default=2, help="phases run at once (one thread each)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the world, CLIP pre-training, both stages and the zero-shot test")
    parser.add_argument("--seeds", type=parse_seeds, default=None,
                        help="comma-separated seeds (e.g. 0,1,2): one run per seed in OUTPUT/seed_<s> "
                             "(finished ones are reused), then OUTPUT/summary.json")
    parser.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=64,
                        help="scene and CLIP input size: 64 px = 8 x 8 CLIP tokens, 128 px = 16 x 16")
    parser.add_argument("--ablations", action="store_true",
                        help="also train and evaluate stage 2 with RMA at other layers (Table 9)")
    parser.add_argument("--proposal-remedy", choices=sorted(PROPOSAL_REMEDIES), default=None,
                        help="train stage 1 with a remedy for suppressed novel-class proposals")
    parser.add_argument("--clip-weights", default=None,
                        help="a synthetic_clip.pth of an earlier run with the same seed and image size, "
                             "reused instead of pre-training (with --seeds: a pattern with {seed})")
    parser.add_argument("--break", dest="broken", choices=BREAKS, default=None,
                        help=argparse.SUPPRESS)  # debugging: prove the tests catch a broken pipeline
    args = parser.parse_args(argv)

    out = Path(args.output).resolve()
    options = dict(scale_name=args.scale, image_size=args.image_size, ablations=args.ablations,
                   remedy=args.proposal_remedy, broken=args.broken, jobs=args.jobs)
    def clip_of(seed):
        return Path(args.clip_weights.format(seed=seed)).resolve() if args.clip_weights else None

    if args.seeds is None:
        check_output(out)
        return run_study(out, seed=args.seed, clip_weights=clip_of(args.seed), **options)

    if (out / "summary.json").exists():
        raise SystemExit(f"{out / 'summary.json'} exists: choose another --output (nothing is overwritten)")
    runs = []
    for seed in args.seeds:
        folder = out / f"seed_{seed}"
        if check_output(folder, reuse_finished=True):
            results = read_json(folder / "results.json")
            expected = {"scale": args.scale, "seed": seed, "image_size": args.image_size,
                        "proposal_remedy": args.proposal_remedy, "break": args.broken}
            found = {k: results.get(k) for k in expected}
            if found != expected or (args.ablations and "rma_layer_ablations" not in results):
                raise SystemExit(f"{folder} holds a run with other settings ({found}): choose another --output")
            print(f"seed {seed}: reusing {folder / 'results.json'}", flush=True)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            results = run_study(folder, seed=seed, clip_weights=clip_of(seed), **options)
        runs.append(results)
    command = "python tools/synthetic_world.py " + " ".join(
        sys.argv[1:] if argv is None else [str(a) for a in argv])
    summary = summarize(runs, command)
    with atomic_write(str(out / "summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"summary of seeds {args.seeds} -> {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
