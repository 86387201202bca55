"""A run's summary as JSON, for schedulers: what ran, on what, with which bundle, and how it ended.

Written atomically (``gmcf.runtime.publish``), also when the run fails or is stopped, so that a
scheduler reads either the previous summary or this run's, never half of one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmcf.runtime.bundle import MANIFEST, sha256_file
from gmcf.runtime.manifest import Manifest
from gmcf.runtime.write import write_text

#: Version of the summary's layout; a new key does not change it, a changed meaning does.
SUMMARY_FORMAT = 1


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gmcf-batch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def bundle_identity(path: Path, manifest: Manifest | None) -> dict[str, Any]:
    """The bundle's folder, id (its dataset and creation time) and checksum: the sha256 of its
    manifest, which holds the sha256 of every other file, so it pins the whole bundle. Without
    a loaded manifest (the bundle could not be read) only the folder is known."""
    manifest_file = path / MANIFEST
    if manifest is None or not manifest_file.is_file():
        return {"path": str(path.resolve()), "id": None, "checksum": None, "format_version": None}
    return {
        "path": str(path.resolve()),
        "id": f"{manifest.dataset or path.name}@{manifest.created or '?'}",
        "checksum": f"sha256:{sha256_file(manifest_file)}",
        "format_version": manifest.format_version,
    }


@dataclass
class RunRecord:
    """Everything a summary says besides the counts; filled in as the run goes."""

    input: Path
    output: Path
    bundle: Path
    started: float = field(default_factory=time.time)
    manifest: Manifest | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(
        self,
        status: str,
        exit_code: int,
        error: str | None,
        counts: dict[str, Any] | None,
        published: bool,
    ) -> dict[str, Any]:
        now = time.time()
        counts = dict(counts or {})
        validity = counts.get("validity")
        if isinstance(validity, float) and math.isnan(validity):
            counts["validity"] = None
        return {
            "format": SUMMARY_FORMAT,
            "status": status,
            "exit_code": exit_code,
            "error": error,
            "input": str(self.input.resolve()),
            "output": str(self.output.resolve()),
            "output_written": published,
            **counts,
            "wall_seconds": round(now - self.started, 3),
            "started": _iso(self.started),
            "finished": _iso(now),
            "bundle": bundle_identity(self.bundle, self.manifest),
            "settings": self.settings,
            "version": package_version(),
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def write_summary_json(path: str | Path, summary: dict[str, Any]) -> None:
    write_text(Path(path), json.dumps(summary, indent=2, allow_nan=False) + "\n")
