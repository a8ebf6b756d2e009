"""Repeated runs of the synthetic-world study, summarised and rendered as the docs' tables.

``summarize`` turns the results.json of independent seeds into mean, standard deviation
(``ddof=1``) and the 95% confidence interval of the mean from Student's t-distribution for
every figure; ``render_tables`` rewrites the marked tables of a Markdown file from such
summaries, each table preceded by the commands that made its summaries::

    <!-- synthetic-world-table modes ci64 ci128 -->
    (rewritten)
    <!-- /synthetic-world-table -->

names the table kind (``TABLES``) and the labels of the summaries it shows.
"""
import math
import re
from typing import Callable, Dict, List, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["PAIRS", "SPLITS", "TABLES", "interval95", "render_tables", "summarize"]

# results.json's splits -> the registered validation datasets whose evaluation gives them
SPLITS = {"all": "synthetic_world_val_all", "base": "synthetic_world_val_base",
          "novel": "synthetic_world_val_novel"}
# results.json entries that are not figures over seeds
_NOT_FIGURES = {"scale", "seed", "image_size", "clip_token_grid", "proposal_remedy", "break",
                "settings", "stage2_total_loss", "layers"}
# settings that must agree between the runs of a summary
_SHARED = ("scale", "image_size", "clip_token_grid", "proposal_remedy", "break", "settings")


def interval95(values: Sequence[float]) -> Dict:
    """Mean, sample standard deviation and the 95% t-interval of the mean of ``values``."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n, "values": x.tolist()}


def _leaves(results: Mapping, prefix=()):
    for key, value in results.items():
        if key in _NOT_FIGURES:
            continue
        if isinstance(value, Mapping):
            yield from _leaves(value, prefix + (key,))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield prefix + (key,), float(value)


def summarize(runs: Sequence[Mapping], command: str = "") -> Dict:
    """The summary of ``runs`` (results.json dicts of different seeds, same settings): every
    figure as ``interval95`` of its values, nested as in results.json. One run gives no
    interval (NaN standard deviation and bounds)."""
    if not runs:
        raise ValueError("a summary needs at least one run")
    for key in _SHARED:
        if any(r.get(key) != runs[0].get(key) for r in runs):
            raise ValueError(f"runs differ in {key!r}: {[r.get(key) for r in runs]}")
    seeds = [r.get("seed") for r in runs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"runs repeat a seed: {seeds}")
    values: Dict[tuple, List[float]] = {}
    for run in runs:
        for path, value in _leaves(run):
            values.setdefault(path, []).append(value)
    figures: Dict = {}
    for path, vals in values.items():
        if len(vals) != len(runs):
            raise ValueError(f"{'/'.join(path)} is missing from some runs")
        node = figures
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = interval95(vals)
    summary = {"command": command, "seeds": seeds, "n": len(runs)}
    summary.update({key: runs[0].get(key) for key in _SHARED})
    summary["figures"] = figures
    if "rma_layer_ablations" in runs[0]:
        summary["rma_layers"] = runs[0]["rma_layer_ablations"]["layers"]
    return summary


def _cell(figure: Mapping, digits: int = 1) -> str:
    """"mean ± half-width of the 95% interval" (the value alone for one seed)."""
    mean, (low, high) = figure["mean"], figure["ci95"]
    if not math.isfinite(mean):
        return "n/a"
    if figure["n"] == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def _grid(summary: Mapping) -> str:
    return f"{summary['clip_token_grid']}x{summary['clip_token_grid']}"


_METRIC_HEADER = ("| {first} | PQ all | PQ base | PQ novel | mIoU all | mIoU base | mIoU novel "
                  "| AP all | AP base | AP novel |\n|---|---|---|---|---|---|---|---|---|---|")


def _metric_row(label: str, splits: Mapping) -> str:
    cells = [_cell(splits[s][m]) for m in ("PQ", "mIoU", "AP") for s in ("all", "base", "novel")]
    return f"| {label} | " + " | ".join(cells) + " |"


def table_modes(summaries: Sequence[Mapping]) -> str:
    """The paper's Table 2 rows and GT-mask rows, per CLIP token grid."""
    lines = [_METRIC_HEADER.format(first="mode (CLIP grid)")]
    for summary in summaries:
        for mode, splits in summary["figures"]["modes"].items():
            lines.append(_metric_row(f"{mode} ({_grid(summary)})", splits))
    return "\n".join(lines)


def table_rma_layers(summaries: Sequence[Mapping]) -> str:
    """RMA layer choice and number (Table 9), per CLIP token grid."""
    lines = [_METRIC_HEADER.format(first="RMA layers (CLIP grid)")]
    for summary in summaries:
        if "rma_layer_ablations" not in summary["figures"]:
            continue  # a study run without --ablations
        rows = {"rma": summary["figures"]["modes"]["rma"], **summary["figures"]["rma_layer_ablations"]}
        for variant, splits in rows.items():
            lines.append(_metric_row(f"{summary['rma_layers'][variant]} ({_grid(summary)})", splits))
    return "\n".join(lines)


def table_proposals(summaries: Sequence[Mapping]) -> str:
    """Stage-1 mask recall@0.5 and mean best IoU (%) of the ground-truth segments, and the
    novel PQ of the modes that use the proposals, per summary (grid, remedy); the untrained
    network once per grid."""
    modes = [m for m in summaries[0]["figures"]["modes"] if not m.startswith("gt_masks")]
    lines = ["| stage 1 (CLIP grid) | recall@0.5 all | base | novel | mean best IoU base | novel | "
             + " | ".join(f"PQ novel {m}" for m in modes) + " |",
             "|---" * (6 + len(modes)) + "|"]
    for summary in summaries:
        f = summary["figures"]
        for trained in ((True,) if summary["proposal_remedy"] else (False, True)):
            key = "" if trained else "_untrained"
            label = (summary["proposal_remedy"] or "paper's loss") if trained else "untrained"
            recall, iou = f[f"proposal_recall_50{key}"], f[f"proposal_mean_best_iou{key}"]
            pq = [_cell(f["modes"][m]["novel"]["PQ"]) if trained else "" for m in modes]
            lines.append(f"| {label} ({_grid(summary)}) | " + " | ".join(
                [_cell(recall["all"]), _cell(recall["base"]), _cell(recall["novel"]),
                 _cell(iou["base"]), _cell(iou["novel"]), *pq]) + " |")
    return "\n".join(lines)


def table_clip(summaries: Sequence[Mapping]) -> str:
    """Zero-shot accuracy (%) of the tiny CLIP on single-concept images."""
    lines = ["| CLIP grid | zero-shot accuracy all | base concepts | novel concepts |", "|---|---|---|---|"]
    for summary in summaries:
        acc = summary["figures"]["clip_zero_shot_accuracy_mean"]
        lines.append(f"| {_grid(summary)} | {_cell(acc['all'])} | {_cell(acc['base'])} | {_cell(acc['novel'])} |")
    return "\n".join(lines)


def table_things_stuff(summaries: Sequence[Mapping]) -> str:
    """PQ of things and of stuff (val_all and val_novel) and the IoU of each novel class, per
    mode and CLIP token grid."""
    novel = [n for n in ("purple blob", "orange blob", "water", "brick")]
    lines = ["| mode (CLIP grid) | PQ things all | PQ stuff all | PQ things novel | PQ stuff novel | "
             + " | ".join(f"IoU {n}" for n in novel) + " |", "|---" * (5 + len(novel)) + "|"]
    for summary in summaries:
        for mode, f in summary["figures"]["modes"].items():
            cells = [_cell(f["all"]["PQ_th"]), _cell(f["all"]["PQ_st"]), _cell(f["novel"]["PQ_th"]),
                     _cell(f["novel"]["PQ_st"]), *(_cell(f["class_IoU"][n]) for n in novel)]
            lines.append(f"| {mode} ({_grid(summary)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_confusion(summaries: Sequence[Mapping]) -> str:
    """For each novel class: the share of its pixels each mode names rightly, and the class
    it names them most often instead (by the mean share over seeds)."""
    novel = ["purple blob", "orange blob", "water", "brick"]
    lines = ["| mode (CLIP grid) | " + " | ".join(novel) + " |", "|---" * (1 + len(novel)) + "|"]
    for summary in summaries:
        for mode, rows in summary["figures"]["pixel_confusion"].items():
            cells = []
            for name in novel:
                row = rows[name]
                wrong = max((n for n in row if n != name), key=lambda n: row[n]["mean"])
                cells.append(f"{_cell(row[name])} (else {wrong}: {row[wrong]['mean']:.0f})")
            lines.append(f"| {mode} ({_grid(summary)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_token_view(summaries: Sequence[Mapping]) -> str:
    """What a mask class token sees of a ground-truth segment (``analysis.mask_token_view``)."""
    lines = ["| CLIP grid | thing: patches seen % | thing: purity % | stuff: patches seen % | stuff: purity % |",
             "|---|---|---|---|---|"]
    for summary in summaries:
        v = summary["figures"]["mask_token_view"]
        lines.append(f"| {_grid(summary)} | {_cell(v['thing']['patches'])} | {_cell(v['thing']['purity'])} | "
                     f"{_cell(v['stuff']['patches'])} | {_cell(v['stuff']['purity'])} |")
    return "\n".join(lines)


# (a, b): the figures of a minus those of b, seed by seed ("ablation:" = rma_layer_ablations)
PAIRS = [("rma", "baseline"), ("rma", "mask_tokens"), ("mask_tokens", "baseline"),
         ("gt_masks_rma", "rma"), ("gt_masks_rma", "gt_masks"),
         ("rma", "ablation:rma_last1"), ("ablation:rma_every2nd", "ablation:rma_last2")]


def _figures_of(summary: Mapping, name: str) -> Mapping:
    if name.startswith("ablation:"):
        return summary["figures"]["rma_layer_ablations"][name.split(":", 1)[1]]
    return summary["figures"]["modes"][name]


def _paired_cell(a_values: Sequence[float], b_values: Sequence[float]) -> str:
    """``a - b`` seed by seed as mean ± 95% half-width; **bold** where the interval excludes 0."""
    diff = interval95(np.subtract(a_values, b_values))
    low, high = diff["ci95"]
    cell = _cell(diff)
    return f"**{cell}**" if diff["n"] > 1 and (low > 0 or high < 0) else cell


def table_pairs(summaries: Sequence[Mapping]) -> str:
    """Paired differences (same seed: same world, CLIP and proposals) between modes: mean ±
    95% half-width of the per-seed differences; **bold** where the interval excludes 0."""
    metrics = [("PQ", "all"), ("PQ", "novel"), ("PQ_st", "all"), ("mIoU", "all"), ("mIoU", "novel")]
    lines = ["| difference (CLIP grid) | " + " | ".join(f"{m} {s}" for m, s in metrics) + " |",
             "|---" * (1 + len(metrics)) + "|"]
    for summary in summaries:
        for a, b in PAIRS:
            try:
                fa, fb = _figures_of(summary, a), _figures_of(summary, b)
            except KeyError:
                continue  # a run without that mode (no --ablations)
            cells = [_paired_cell(fa[split][metric]["values"], fb[split][metric]["values"])
                     for metric, split in metrics]
            label = f"{a.split(':')[-1]} - {b.split(':')[-1]} ({_grid(summary)})"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_remedy(summaries: Sequence[Mapping]) -> str:
    """The stage-1 remedy against the paper's loss, seed by seed (same world and CLIP): the
    summaries come in pairs (paper's loss, remedy) of the same seeds and grid; differences of
    recall@0.5 (novel, base) and of each proposal mode's novel PQ and mIoU."""
    if len(summaries) % 2:
        raise ValueError("the remedy table takes pairs of summaries: paper's loss, then remedy")
    modes = [m for m in summaries[0]["figures"]["modes"] if not m.startswith("gt_masks")]
    lines = ["| remedy - paper's loss (CLIP grid) | recall@0.5 novel | recall@0.5 base | "
             + " | ".join(f"PQ novel {m}" for m in modes) + " | "
             + " | ".join(f"mIoU novel {m}" for m in modes) + " |",
             "|---" * (3 + 2 * len(modes)) + "|"]
    for paper, remedy in zip(summaries[::2], summaries[1::2]):
        if paper["proposal_remedy"] or not remedy["proposal_remedy"]:
            raise ValueError("the remedy table takes pairs of summaries: paper's loss, then remedy")
        if paper["seeds"] != remedy["seeds"] or paper["clip_token_grid"] != remedy["clip_token_grid"]:
            raise ValueError(f"paired summaries need the same seeds and grid: {paper['seeds']} "
                             f"({_grid(paper)}) against {remedy['seeds']} ({_grid(remedy)})")
        fp, fr = paper["figures"], remedy["figures"]
        cells = [_paired_cell(fr["proposal_recall_50"][s]["values"], fp["proposal_recall_50"][s]["values"])
                 for s in ("novel", "base")]
        for metric in ("PQ", "mIoU"):
            cells += [_paired_cell(fr["modes"][m]["novel"][metric]["values"],
                                   fp["modes"][m]["novel"][metric]["values"]) for m in modes]
        lines.append(f"| {remedy['proposal_remedy']} ({_grid(remedy)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TABLES: Dict[str, Callable[[Sequence[Mapping]], str]] = {
    "pairs": table_pairs,
    "modes": table_modes,
    "rma_layers": table_rma_layers,
    "proposals": table_proposals,
    "remedy": table_remedy,
    "things_stuff": table_things_stuff,
    "confusion": table_confusion,
    "token_view": table_token_view,
    "clip": table_clip,
}
_BLOCK = re.compile(r"(<!-- synthetic-world-table ([a-z_]+)((?: [\w.-]+)+) -->\n)(.*?)(<!-- /synthetic-world-table -->)",
                    re.DOTALL)


def render_tables(markdown: str, summaries: Mapping[str, Mapping]) -> str:
    """``markdown`` with every marked table rewritten from ``summaries`` (label -> summary):
    the commands that made its summaries, then the table (means ± 95% half-widths)."""

    def rewrite(match):
        kind, labels = match.group(2), match.group(3).split()
        if kind not in TABLES:
            raise ValueError(f"unknown table kind {kind!r} (known: {sorted(TABLES)})")
        missing = [label for label in labels if label not in summaries]
        if missing:
            raise ValueError(f"table {kind} needs the summaries {missing}; given: {sorted(summaries)}")
        chosen = [summaries[label] for label in labels]
        commands = "\n".join(dict.fromkeys(s["command"] for s in chosen))
        seeds = ", ".join(dict.fromkeys(
            f"{len(s['seeds'])} seed{'s' if len(s['seeds']) > 1 else ''} ({','.join(map(str, s['seeds']))})"
            for s in chosen))
        single = " (one seed: its value, no interval)" if any(s["n"] == 1 for s in chosen) else ""
        body = (f"```\n{commands}\n```\n\n{TABLES[kind](chosen)}\n\n"
                f"Means over {seeds} ± the half-width of the 95% t-interval of the mean{single}.\n")
        return match.group(1) + body + match.group(5)

    rendered, count = _BLOCK.subn(rewrite, markdown)
    if count == 0:
        raise ValueError("no <!-- synthetic-world-table KIND LABEL... --> block found")
    return rendered
