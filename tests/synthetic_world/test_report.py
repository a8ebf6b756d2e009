"""Summaries of repeated synthetic-world runs: mean, sample std and the 95% interval agree
with scipy's t-interval; the docs' marked tables are rewritten from summaries, nothing else;
tools/synthetic_world.py --seeds reuses finished seeds and writes summary.json."""
import copy
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from maskclip_d2.synthetic_world.report import TABLES, interval95, render_tables, summarize

REPO = Path(__file__).resolve().parents[2]


def _results(seed, pq_rma_novel, recall_novel):
    """A results.json of tools/synthetic_world.py (the entries the tables read)."""
    splits = ("all", "base", "novel")
    figures = {s: {"PQ": 10.0 + seed, "SQ": 70.0, "RQ": 15.0, "PQ_th": 9.0, "PQ_st": 11.0, "mIoU": 20.0 - seed,
                   "AP": 5.0} for s in splits}
    modes = {m: copy.deepcopy(figures) for m in ("baseline", "mask_tokens", "rma", "gt_masks", "gt_masks_rma")}
    modes["rma"]["novel"]["PQ"] = pq_rma_novel
    recall = {"all": 70.0, "base": 72.0, "novel": recall_novel}
    return {"scale": "ci", "seed": seed, "image_size": 64, "clip_token_grid": 8, "proposal_remedy": None,
            "break": None, "settings": {"num_train": 400}, "modes": modes,
            "proposal_recall_50": recall, "proposal_recall_50_untrained": recall,
            "proposal_mean_best_iou": {"all": 0.7, "base": 0.75, "novel": 0.6},
            "proposal_mean_best_iou_untrained": {"all": 0.3, "base": 0.3, "novel": 0.3},
            "clip_zero_shot_accuracy": {"red blob": 1.0, "water": 0.5},
            "clip_zero_shot_accuracy_mean": {"all": 75.0, "base": 100.0, "novel": 50.0},
            "stage2_total_loss": [[19, 100.0 + seed]]}


def test_interval_is_scipys_t_interval():
    values = [23.7, 29.1, 26.0]
    summary = interval95(values)
    mean, sem = np.mean(values), stats.sem(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    assert summary["mean"] == pytest.approx(mean, abs=1e-12)
    assert summary["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert summary["ci95"] == pytest.approx([low, high], abs=1e-9)
    assert summary["n"] == 3 and summary["values"] == values


def test_summary_has_every_figure_of_every_seed():
    runs = [_results(s, pq, r) for s, pq, r in ((0, 23.7, 80.0), (1, 29.1, 60.0), (2, 26.0, 70.0))]
    summary = summarize(runs, "python tools/synthetic_world.py --seeds 0,1,2 --output out")
    assert summary["seeds"] == [0, 1, 2] and summary["n"] == 3 and summary["clip_token_grid"] == 8
    assert summary["figures"]["modes"]["rma"]["novel"]["PQ"] == interval95([23.7, 29.1, 26.0])
    assert summary["figures"]["proposal_recall_50"]["novel"]["values"] == [80.0, 60.0, 70.0]
    assert "stage2_total_loss" not in summary["figures"] and "seed" not in summary["figures"]
    with pytest.raises(ValueError, match="differ in 'image_size'"):
        summarize([runs[0], {**runs[1], "image_size": 128}])
    with pytest.raises(ValueError, match="repeat a seed"):
        summarize([runs[0], runs[0]])


def test_marked_tables_are_rewritten_and_nothing_else():
    runs = [_results(s, pq, 70.0) for s, pq in ((0, 20.0), (1, 30.0))]
    summary = summarize(runs, "python tools/synthetic_world.py --scale ci --seeds 0,1 --output out/ci64")
    doc = ("# Title\n\ntext before\n\n<!-- synthetic-world-table modes ci64 -->\nstale\n"
           "<!-- /synthetic-world-table -->\n\ntext after\n")
    rendered = render_tables(doc, {"ci64": summary})
    assert rendered.startswith("# Title\n\ntext before\n\n<!-- synthetic-world-table modes ci64 -->\n```\n"
                               "python tools/synthetic_world.py --scale ci --seeds 0,1 --output out/ci64\n```")
    assert rendered.endswith("<!-- /synthetic-world-table -->\n\ntext after\n") and "stale" not in rendered
    half = stats.t.ppf(0.975, 1) * np.std([20.0, 30.0], ddof=1) / np.sqrt(2)
    rma_row = next(line for line in rendered.splitlines() if line.startswith("| rma (8x8)"))
    assert rma_row.split(" | ")[3] == f"{25.0:.1f} ± {half:.1f}"  # PQ novel
    assert render_tables(rendered, {"ci64": summary}) == rendered  # idempotent
    with pytest.raises(ValueError, match=r"needs the summaries \['ci128'\]"):
        render_tables(doc.replace("ci64 -->", "ci128 -->"), {"ci64": summary})


def test_seeds_reuse_finished_runs_and_write_the_summary(tmp_path):
    spec = importlib.util.spec_from_file_location("synthetic_world_tool", REPO / "tools/synthetic_world.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for seed, pq in ((3, 20.0), (4, 30.0)):
        (tmp_path / f"seed_{seed}").mkdir()
        (tmp_path / f"seed_{seed}" / "results.json").write_text(json.dumps(_results(seed, pq, 70.0)))
    tool.main(["--scale", "ci", "--seeds", "3,4", "--output", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["figures"]["modes"]["rma"]["novel"]["PQ"]["values"] == [20.0, 30.0]
    assert summary["command"].endswith(f"--scale ci --seeds 3,4 --output {tmp_path}")
    with pytest.raises(SystemExit, match="summary.json exists"):
        tool.main(["--scale", "ci", "--seeds", "3,4", "--output", str(tmp_path)])
    (tmp_path / "summary.json").unlink()  # a finished seed made with other settings is not mixed in
    with pytest.raises(SystemExit, match="holds a run with other settings"):
        tool.main(["--scale", "ci", "--image-size", "128", "--seeds", "3,4", "--output", str(tmp_path)])
    assert not (tmp_path / "summary.json").exists()


def test_paired_differences_are_seed_by_seed():
    # rma minus baseline PQ novel: 3.0, 4.0, 5.0 (the baseline's PQ is 10 + seed in _results)
    runs = [_results(s, pq, 70.0) for s, pq in ((0, 13.0), (1, 15.0), (2, 17.0))]
    table = TABLES["pairs"]([summarize(runs)])
    row = next(line for line in table.splitlines() if line.startswith("| rma - baseline (8x8)"))
    expected = interval95([3.0, 4.0, 5.0])
    half = (expected["ci95"][1] - expected["ci95"][0]) / 2
    assert row.split(" | ")[2] == f"**{4.0:.1f} ± {half:.1f}**"  # PQ novel: the interval excludes 0
    assert row.split(" | ")[1] == "0.0 ± 0.0"  # PQ all: equal in every seed


def test_remedy_differences_are_paired_by_seed_and_grid():
    paper = [_results(s, 10.0, recall) for s, recall in ((0, 40.0), (1, 50.0), (2, 45.0))]
    remedy = [dict(_results(s, 12.0 + s, recall), proposal_remedy="void_unpenalised")
              for s, recall in ((0, 60.0), (1, 50.0), (2, 52.0))]
    table = TABLES["remedy"]([summarize(paper), summarize(remedy)])
    row = next(line for line in table.splitlines() if line.startswith("| void_unpenalised (8x8)"))
    cells = row.split(" | ")
    recall = interval95([20.0, 0.0, 7.0])  # novel recall, seed by seed: not resolved (no bold)
    assert cells[1] == f"{recall['mean']:.1f} ± {(recall['ci95'][1] - recall['ci95'][0]) / 2:.1f}"
    assert cells[2] == "0.0 ± 0.0"  # base recall: equal in every seed
    header = table.splitlines()[0].split(" | ")
    pq_rma = interval95([2.0, 3.0, 4.0])  # rma's novel PQ 12 + s against 10: the interval excludes 0
    assert cells[header.index("PQ novel rma")] == f"**{pq_rma['mean']:.1f} ± {(pq_rma['ci95'][1] - pq_rma['ci95'][0]) / 2:.1f}**"
    with pytest.raises(ValueError, match="same seeds"):
        TABLES["remedy"]([summarize(paper), summarize(remedy[:2])])
    with pytest.raises(ValueError, match="paper's loss, then remedy"):
        TABLES["remedy"]([summarize(remedy), summarize(paper)])
