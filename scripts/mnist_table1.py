"""The paper's Table 1 (MNIST) for an image bundle, on its held-out test-set 1s.

    python scripts/mnist_table1.py exported/mnist-1-to-7 [--threshold 0.5 --tol 0.5] [--json]

Prints the markdown table of docs/mnist.md (our row next to the paper's) and, with --json, every
figure as JSON. One thread, one repetition (the paper averages five random splits). The search
runs at the paper's decision boundary (T = 0.5) unless told otherwise; the bundle's own default
asks f for more (docs/mnist.md).
"""

from __future__ import annotations

import argparse
import json

from gmcf.trainer.image_report import table1_markdown, table1_metrics


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundle", nargs="?", default="exported/mnist-1-to-7")
    ap.add_argument("--threshold", type=float, default=0.5, help="T (default: the paper's 0.5)")
    ap.add_argument("--tol", type=float, default=0.5, help="tolerance (default: 0.5)")
    ap.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = ap.parse_args()
    m = table1_metrics(args.bundle, threshold=args.threshold, tol=args.tol)
    print(table1_markdown(m))
    if args.json:
        print(json.dumps(m, indent=2))


if __name__ == "__main__":
    main()
