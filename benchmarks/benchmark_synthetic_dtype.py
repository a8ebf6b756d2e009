#!/usr/bin/env python
"""bfloat16 inference against float32 on the synthetic world: the trained models of a
``tools/synthetic_world.py --seeds`` study evaluated again with ``--dtype bfloat16``, and the
difference from their float32 evaluation set against the float32 spread over seeds.

For every seed folder of the study (``STUDY/seed_<s>/``) and every mode (``--modes``), the
study's own evaluation command (its ``run.json``) runs again with ``--dtype bfloat16`` into
``OUTPUT/seed_<s>/<mode>/`` (``--output``, default ``STUDY/eval_bfloat16``, which must not
exist yet: nothing is reused or replaced; one thread, the study's datasets); then one table:
per mode and metric the float32 mean over seeds, the bfloat16 mean, the paired difference
(bfloat16 - float32, seed by seed: mean ± 95% t half-width) and the float32 standard deviation
over seeds. bfloat16 is "within the seed spread" when |mean difference| <= that deviation (exit
status 1 when it is not, for some figure). A one-seed run's folder works too (no spread then).

    python benchmarks/benchmark_synthetic_dtype.py output/ci64
    python benchmarks/benchmark_synthetic_dtype.py output/ci64 --modes rma --json out.json

"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from maskclip_d2.synthetic_world.report import SPLITS, interval95  # noqa: E402
from maskclip_d2.utils import atomic_write  # noqa: E402

MODES = ("baseline", "mask_tokens", "rma")
METRICS = (("PQ", "panoptic_seg", "PQ"), ("mIoU", "sem_seg", "mIoU"), ("AP", "segm", "AP"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", help="the OUTPUT folder of tools/synthetic_world.py --seeds (with seed_<s>/ folders)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--output", help="folder for the bfloat16 evaluations (default STUDY/eval_bfloat16); "
                        "must not exist yet")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    return parser.parse_args(argv)


def seed_folders(study: Path):
    """The finished seed_<s>/ folders of a --seeds study, or the folder of a one-seed run."""
    if (study / "results.json").is_file() and (study / "run.json").is_file():
        return [study]
    folders = sorted(study.glob("seed_*"), key=lambda p: int(p.name.split("_")[1]))
    finished = [f for f in folders if (f / "results.json").is_file() and (f / "run.json").is_file()]
    if not finished:
        raise SystemExit(f"{study}: no finished seed_<s>/ folder (results.json and run.json): "
                         "run tools/synthetic_world.py --seeds ... --output " + str(study) + " first")
    return finished


def bfloat16_command(folder: Path, mode: str, out: Path):
    """The study's evaluation command of ``mode`` with --dtype bfloat16, writing to ``out``."""
    commands = json.loads((folder / "run.json").read_text())["commands"]
    key = f"eval_{mode}"
    if key not in commands:
        raise SystemExit(f"{folder / 'run.json'} has no {key} command")
    argv = commands[key]
    argv = argv.split(" ") if isinstance(argv, str) else list(argv)  # "" stays an (empty) value
    # the study writes its folder as OUTPUT in the commands (OUTPUT/clip/..., not OUTPUT_DIR)
    argv = [str(folder) + a[len("OUTPUT"):] if a == "OUTPUT" or a.startswith("OUTPUT/") else a for a in argv]
    if "OUTPUT_DIR" not in argv:
        raise SystemExit(f"{folder / 'run.json'}: the {key} command has no OUTPUT_DIR")
    index = argv.index("OUTPUT_DIR")
    argv[index + 1] = str(out)
    script = argv.index("train_net.py") if "train_net.py" in argv else next(
        i for i, a in enumerate(argv) if a.endswith("train_net.py"))
    argv = [sys.executable, str(REPO / "train_net.py"), "--dtype", "bfloat16"] + argv[script + 1:]
    return argv, out


def evaluate(folder: Path, mode: str, out: Path) -> dict:
    """Runs the bfloat16 evaluation afresh (nothing is reused: the code or the model may have
    changed since an earlier one) and returns its eval_results.json."""
    argv, out = bfloat16_command(folder, mode, out)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MASKCLIP_CLIP_DOWNLOAD="0",
               DETECTRON2_DATASETS=str(folder / "datasets"))
    out.mkdir(parents=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        run = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if run.returncode != 0:
        raise SystemExit(f"the bfloat16 evaluation failed: see {out / 'log.txt'}")
    print(f"{folder.name} {mode}: evaluated in bfloat16 in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads((out / "eval_results.json").read_text())


def figure(evaluated: dict, split: str, metric) -> float:
    _, task, key = metric
    return float(evaluated[SPLITS[split]].get(task, {}).get(key, float("nan")))


def main(argv=None):
    args = parse_args(argv)
    folders = seed_folders(Path(args.study))
    output = Path(args.output or Path(args.study) / "eval_bfloat16")
    if output.exists():
        raise SystemExit(f"{output} exists: remove it or choose another --output (nothing is replaced)")
    rows = []
    for mode in args.modes:
        float32 = [json.loads((f / "eval" / mode / "eval_results.json").read_text()) for f in folders]
        bfloat16 = [evaluate(f, mode, output / f.name / mode) for f in folders]
        for split in SPLITS:
            for metric in METRICS:
                a = np.array([figure(e, split, metric) for e in float32])
                b = np.array([figure(e, split, metric) for e in bfloat16])
                if np.isnan(a).all():
                    continue
                diff = interval95(b - a)
                spread = float(a.std(ddof=1)) if len(a) > 1 else float("nan")
                rows.append({"mode": mode, "split": split, "metric": metric[0], "float32": a.tolist(),
                             "bfloat16": b.tolist(), "difference": diff, "float32_std": spread,
                             "within_seed_spread": bool(abs(diff["mean"]) <= spread) if len(a) > 1 else None})
    seeds = [json.loads((f / "results.json").read_text())["seed"] for f in folders]
    print(f"\nbfloat16 - float32 on {args.study}, seeds {seeds}: mean ± 95% half-width of the per-seed "
          "differences; float32 std over seeds")
    print("| mode | split | metric | float32 mean | bfloat16 mean | difference | float32 std | within spread |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        d = r["difference"]
        half = (d["ci95"][1] - d["ci95"][0]) / 2
        print(f"| {r['mode']} | {r['split']} | {r['metric']} | {np.mean(r['float32']):.1f} | "
              f"{np.mean(r['bfloat16']):.1f} | {d['mean']:+.2f} ± {half:.2f} | {r['float32_std']:.1f} | "
              f"{ {True: 'yes', False: 'NO', None: 'n/a (one seed)'}[r['within_seed_spread']]} |")
    if args.json:
        with atomic_write(args.json) as tmp, open(tmp, "w") as f:
            json.dump({"study": args.study, "seeds": seeds, "rows": rows}, f, indent=1)
    return 1 if any(r["within_seed_spread"] is False for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
