#!/usr/bin/env python
"""Rewrites the synthetic-world tables of a Markdown file (docs/SYNTHETIC_WORLD.md) from the
summary.json files of ``tools/synthetic_world.py --seeds``: every block

    <!-- synthetic-world-table KIND LABEL [LABEL...] -->
    ...
    <!-- /synthetic-world-table -->

gets the commands that made the labelled summaries and the table KIND (modes, rma_layers,
proposals, clip) of means ± 95% half-widths. The file is replaced whole (written to a temporary
file, then renamed); nothing else in it changes.

    python tools/synthetic_world_tables.py docs/SYNTHETIC_WORLD.md \\
        ci64=out/ci64/summary.json ci128=out/ci128/summary.json

``--print KIND LABEL=SUMMARY...`` prints the table KIND of those summaries, in that order,
instead of rewriting anything.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskclip_d2.synthetic_world.report import TABLES, render_tables  # noqa: E402
from maskclip_d2.utils import atomic_write  # noqa: E402


def read_summaries(pairs):
    summaries = {}
    for pair in pairs:
        label, sep, path = pair.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"expected LABEL=path/summary.json, got {pair!r}")
        try:
            with open(path) as f:
                summaries[label] = json.load(f)
        except (OSError, ValueError) as e:
            raise SystemExit(f"cannot read the summary {path!r} ({e}): run tools/synthetic_world.py --seeds first")
        if "figures" not in summaries[label]:
            raise SystemExit(f"{path} is not a summary of tools/synthetic_world.py --seeds (no 'figures')")
    return summaries


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("markdown", nargs="?", help="the Markdown file whose tables to rewrite")
    parser.add_argument("summaries", nargs="*", metavar="LABEL=SUMMARY", help="labelled summary.json files")
    parser.add_argument("--print", metavar="KIND", dest="print_table", choices=sorted(TABLES),
                        help="print this table of the given summaries (in their order) instead")
    args = parser.parse_args(argv)
    pairs = list(args.summaries)
    if args.print_table:
        if args.markdown:
            pairs.insert(0, args.markdown)
        summaries = read_summaries(pairs)
        print(TABLES[args.print_table](list(summaries.values())))
        return
    if not args.markdown:
        parser.error("name the Markdown file to rewrite (or --print a table)")
    summaries = read_summaries(pairs)
    text = Path(args.markdown).read_text()
    try:
        rendered = render_tables(text, summaries)
    except ValueError as e:
        raise SystemExit(f"{args.markdown}: {e}")
    with atomic_write(args.markdown) as tmp:
        Path(tmp).write_text(rendered)
    print(f"rewrote the tables of {args.markdown}")


if __name__ == "__main__":
    main()
