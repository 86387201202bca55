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
from gmcf.runtime.schema import Preprocessor

FORMAT = "gmcf-bundle"
FORMAT_VERSION = 2
OPSET = 17
MANIFEST = "manifest.json"

#: name -> (input names, output names) of every graph a bundle carries.
GRAPHS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "encoder": (("x",), ("z",)),
    "encoder_u": (("x",), ("z_u",)),
    "decoder": (("z", "z_u"), ("x_soft",)),
    "classifier": (("x",), ("score",)),
    "search": (("x", "alphas", "target"), ("code", "score")),
    "search_bounded": (("x", "alphas", "target", "lower", "upper"), ("code", "score")),
    "reconstruct": (("x",), ("error",)),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SearchDefaults:
    """Settings of the search; the manifest gives a bundle's defaults, a run may override them."""

    threshold: float = 0.5
    tol: float = 0.5
    steps: int = 16
    refine: bool = True
    refine_points: int = 8
    refine_rounds: int = 3
    extrapolate: bool = True
    max_alpha: float = 2.0
    fallback: bool = True
    """The last-resort search toward nearby approved training rows (``gmcf.runtime.fallback``)
    for rows the walk misses; a bundle without anchors has none."""
    fallback_neighbours: int = 8
    fallback_steps: int = 8

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    preprocessor: Preprocessor
    search: SearchDefaults

    def graph_path(self, name: str) -> Path:
        return self.path / str(self.manifest["graphs"][name])

    @property
    def report(self) -> dict[str, Any]:
        p = self.path / "report.json"
        return dict(json.loads(p.read_text())) if p.exists() else {}

    @property
    def mu_1(self) -> list[float]:
        return list(self.manifest["latent"]["mu"][1])


def load_bundle(path: Path | str, verify: bool = True) -> Bundle:
    """Read and validate a bundle folder. Raises BundleError naming the bundle and the problem."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"bundle {path}: not a folder")
    if not mpath.exists():
        raise BundleError(f"bundle {path}: no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle {path}: {MANIFEST} is not valid JSON ({exc.msg})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"bundle {path}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"bundle {path}: format version {version} is newer than this gmcf-batch reads "
            f"({FORMAT_VERSION}); upgrade gmcf-batch"
        )
    if version < FORMAT_VERSION:
        raise BundleError(
            f"bundle {path}: format version {version} is older than this gmcf-batch reads "
            f"({FORMAT_VERSION}); train the bundle again with `gmcf-batch train`"
        )
    for key in ("files", "graphs", "preprocessing", "latent", "search"):
        if key not in manifest:
            raise BundleError(f"bundle {path}: {MANIFEST} lacks {key!r}")
    missing_graphs = sorted(set(GRAPHS) - set(manifest["graphs"]))
    if missing_graphs:
        raise BundleError(f"bundle {path}: manifest lists no graph for {', '.join(missing_graphs)}")
    for fname, digest in manifest["files"].items():
        fpath = path / fname
        if not fpath.exists():
            raise BundleError(f"bundle {path}: file {fname} is missing")
        if verify and sha256_file(fpath) != digest:
            raise BundleError(f"bundle {path}: file {fname} does not match its sha256 in the manifest (altered?)")
    for name, fname in manifest["graphs"].items():
        if fname not in manifest["files"]:
            raise BundleError(f"bundle {path}: graph {name} ({fname}) has no checksum in the manifest")
    try:
        pre = Preprocessor.from_dict(manifest["preprocessing"])
        search = SearchDefaults(**manifest["search"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"bundle {path}: malformed manifest: {exc}") from exc
    return Bundle(path, manifest, pre, search)


def check_graph_signature(bundle: Bundle, name: str, inputs: list[str], outputs: list[str]) -> None:
    want_in, want_out = GRAPHS[name]
    if tuple(inputs) != want_in or tuple(outputs) != want_out:
        raise BundleError(
            f"bundle {bundle.path}: graph {name} has inputs {inputs} and outputs {outputs}, "
            f"expected {list(want_in)} and {list(want_out)}"
        )
