"""Write (or replace) the anchors of the last-resort search in an existing bundle trained on a
shipped data set: the approved rows of the bundle's own training split (seeded sample), the file
``anchors.npy`` and its manifest entry and checksum. For measuring bundles trained before the
anchors existed; a new training writes them itself.

    python scripts/add_anchors.py /tmp/vl/b/adult-mlp-s1 [--count 4096]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from gmcf.datasets import load_dataset
from gmcf.runtime.bundle import MANIFEST, load_bundle, sha256_file
from gmcf.runtime.engine import Engine
from gmcf.trainer.anchors import ANCHOR_COUNT, select_anchors
from gmcf.trainer.prepare import prepare

FILE = "anchors.npy"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--count", type=int, default=ANCHOR_COUNT)
    args = ap.parse_args()
    for path in args.bundles:
        b = load_bundle(path)
        cfg = b.manifest.train_config
        p = prepare(load_dataset(str(b.manifest.dataset)), cfg["test_size"], cfg["seed"])
        engine = Engine(b)
        rows = select_anchors(p.x_train, engine.score, b.search.threshold, args.count, cfg["seed"])
        np.save(path / FILE, rows, allow_pickle=False)
        m = json.loads((path / MANIFEST).read_text())
        m["anchors"] = {"file": FILE, "count": len(rows)}
        m["files"][FILE] = sha256_file(path / FILE)
        (path / MANIFEST).write_text(json.dumps(m, indent=2) + "\n")
        print(f"{path}: {len(rows):,} anchors")


if __name__ == "__main__":
    main()
