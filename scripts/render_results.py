"""Render the Markdown table of `gmcf-batch evaluate -o PATH` results again from PATH.json.

    python scripts/render_results.py bench/results/adult.json bench/results/lending-club-run1.json

Writes PATH.md beside each JSON file and prints it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gmcf.trainer.evaluate import load_evaluation


def main() -> None:
    for arg in sys.argv[1:]:
        ev = load_evaluation(Path(arg))
        text = ev.to_markdown()
        Path(arg).with_suffix(".md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
