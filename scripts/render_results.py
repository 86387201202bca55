"""Render the Markdown table of `gmcf-batch evaluate -o PATH` results again from PATH.json, or
merge runs that split the repetitions of one protocol between processes (``--seed`` ranges).

    python scripts/render_results.py bench/results/lending-club-run1.json
    python scripts/render_results.py --merge bench/results/adult-all.json A.json B.json

Writes PATH.md beside each JSON file (with --merge: the merged JSON and its .md) and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gmcf.trainer.evaluate import load_evaluation, merge_evaluations, write_results


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--merge", type=Path, help="write the merged evaluation here (.json and .md)")
    args = ap.parse_args()
    if args.merge:
        ev = merge_evaluations([load_evaluation(p) for p in args.results])
        write_results(ev, args.merge)
        print(ev.to_markdown())
        return
    for path in args.results:
        text = load_evaluation(path).to_markdown()
        path.with_suffix(".md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
