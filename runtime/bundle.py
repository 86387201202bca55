"""A bundle: a folder with ``manifest.json``, ONNX graphs and the training report.

The loader checks the format version, the sha256 of every file the manifest lists, and that each
graph's inputs and outputs are the ones the manifest promises. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gmcf.runtime.errors import BundleError
from gmcf.runtime.manifest import FORMAT as FORMAT
from gmcf.runtime.manifest import FORMAT_VERSION as FORMAT_VERSION
from gmcf.runtime.manifest import GRAPHS as GRAPHS
from gmcf.runtime.manifest import MANIFEST as MANIFEST
from gmcf.runtime.manifest import OPSET as OPSET
from gmcf.runtime.manifest import OPTIONAL_GRAPHS, Manifest
from gmcf.runtime.schema import Preprocessor
from gmcf.runtime.settings import RunSettings
from gmcf.runtime.settings import SearchDefaults as SearchDefaults


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def preprocessor(self) -> Preprocessor:
        return self.manifest.preprocessing

    @property
    def search(self) -> RunSettings:
        """The bundle's default run settings (a run may override them)."""
        return self.manifest.search

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name]

    @property
    def has_screen(self) -> bool:
        """Whether the bundle carries the screen graphs (a cheap stand-in of f)."""
        return all(name in self.manifest.graphs for name in OPTIONAL_GRAPHS)

    @property
    def report(self) -> dict[str, Any]:
        p = self.path / "report.json"
        return dict(json.loads(p.read_text())) if p.exists() else {}

    @property
    def mu_1(self) -> list[float]:
        return self.manifest.latent.mu_1


def load_bundle(path: Path | str, verify: bool = True) -> Bundle:
    """Read and validate a bundle folder. Raises BundleError naming the bundle and the problem."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"bundle {path}: not a folder")
    if not mpath.exists():
        raise BundleError(f"bundle {path}: no {MANIFEST}")
    try:
        raw = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle {path}: {MANIFEST} is not valid JSON ({exc.msg})") from exc
    manifest = Manifest.from_dict(raw, f"bundle {path}")
    for fname, digest in manifest.files.items():
        fpath = path / fname
        if not fpath.exists():
            raise BundleError(f"bundle {path}: file {fname} is missing")
        if verify and sha256_file(fpath) != digest:
            raise BundleError(
                f"bundle {path}: file {fname} does not match its sha256 in the manifest (altered?)"
            )
    return Bundle(path, manifest)


def check_graph_signature(bundle: Bundle, name: str, inputs: list[str], outputs: list[str]) -> None:
    want_in, want_out = GRAPHS[name] if name in GRAPHS else OPTIONAL_GRAPHS[name]
    if tuple(inputs) != want_in or tuple(outputs) != want_out:
        raise BundleError(
            f"bundle {bundle.path}: graph {name} has inputs {inputs} and outputs {outputs}, "
            f"expected {list(want_in)} and {list(want_out)}"
        )
