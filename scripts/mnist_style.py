"""Do an image bundle's counterfactuals read as the target digit, and keep the query's slant and
stroke thickness? On the held-out test-set 1s, for several thresholds T.

    python scripts/mnist_style.py exported/mnist-1-to-7 \\
        [--thresholds 0.5:0.5,0.9:0.1,0.99:0.01] [--json]

"Reads as a 7" is the verdict of small CNNs (``gmcf.trainer.baselines.ImageJudge``, one per seed)
trained on MNIST's training 1s and 7s with their true labels: observers that are not f. Slant and
thickness are those of the stem (``gmcf.trainer.morphology``). Needs torch (the trainer extra) for
the judge.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gmcf.datasets import load_mnist_1_7
from gmcf.trainer.baselines import train_image_judge
from gmcf.trainer.image_report import style_markdown, style_metrics


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundle", nargs="?", default="exported/mnist-1-to-7")
    ap.add_argument(
        "--thresholds",
        default="0.5:0.5,0.9:0.1,0.99:0.01,0.999:0.001",
        help="comma-separated T:tol pairs",
    )
    ap.add_argument("--judges", type=int, default=5, help="CNN judges, trained with seeds 0..N-1")
    ap.add_argument("--json", action="store_true", help="also print every figure as JSON")
    args = ap.parse_args()
    images, digits, is_test = load_mnist_1_7()
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    judges, accuracy = [], []
    for seed in range(args.judges):
        t0 = time.perf_counter()
        judge = train_image_judge(
            flat[~is_test], (digits[~is_test] == 7).astype(np.int64), images.shape[1:], seed
        )
        accuracy.append(
            float(((judge.predict(flat[is_test]) > 0.5) == (digits[is_test] == 7)).mean())
        )
        judges.append(judge.predict)
        print(
            f"CNN judge {seed}: trained in {time.perf_counter() - t0:.0f} s, test accuracy "
            f"{100 * accuracy[-1]:.2f}% ({int(is_test.sum()):,} test-set 1s and 7s)"
        )
    rows = []
    for pair in args.thresholds.split(","):
        t, tol = (float(v) for v in pair.split(":"))
        rows.append(style_metrics(args.bundle, judges, threshold=t, tol=tol))
    print(style_markdown(rows))
    if args.json:
        print(json.dumps({"judge_test_accuracy": accuracy, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
