"""A run's settings, checked in one place whatever the entry point (CLI, Python API, workers).

``RunSettings`` holds the search settings of one run: a bundle's manifest gives their defaults
(its ``search`` section), a run may override any of them. The other knobs of a run (batch size,
workers, threads, options per query) are checked by the functions below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from gmcf.runtime.errors import GmcfError, InputError

#: Rows per batch of a tabular file when none is given.
DEFAULT_BATCH_SIZE = 65536
#: Model-space entries per batch of a wide input (images) when no batch size is given.
WIDE_BATCH_ENTRIES = 1 << 21
MIN_BATCH_SIZE = 1024


@dataclass(frozen=True)
class RunSettings:
    """Settings of the search of one run; the manifest gives a bundle's defaults."""

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
    fallback_extrapolated: bool = True
    """Also run the last resort for rows the walk answered only past mu_1 (``extrapolated``),
    keeping the nearer answer."""
    screen: bool = True
    """Walk, rescue and revert with the bundle's screen g (a cheap stand-in of f) and let f
    confirm the candidates g picks (``gmcf.runtime.search``); a bundle without one has none."""
    screen_rounds: int = 2
    """Candidates f confirms per row, in g's order, before the row is searched with f alone."""

    @property
    def score_ceiling(self) -> float:
        """threshold + tol: a counterfactual's score must lie in [threshold, score_ceiling)."""
        return self.threshold + self.tol

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def validate(self) -> RunSettings:
        """Raise a GmcfError naming the first setting out of range; return self."""
        if not 0.0 < self.threshold < 1.0:
            raise GmcfError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.tol <= 0.0:
            raise GmcfError(f"tol must be positive, got {self.tol}")
        if self.steps < 1:
            raise GmcfError(f"steps must be at least 1, got {self.steps}")
        if self.refine_points < 1 or self.refine_rounds < 0:
            raise GmcfError("refine_points must be >= 1 and refine_rounds >= 0")
        if self.max_alpha < 1.0:
            raise GmcfError(f"max_alpha must be at least 1, got {self.max_alpha}")
        if self.screen_rounds < 1:
            raise GmcfError(f"screen_rounds must be at least 1, got {self.screen_rounds}")
        if self.fallback_neighbours < 1 or self.fallback_steps < 1:
            raise GmcfError("fallback_neighbours and fallback_steps must be at least 1")
        return self

    def override(self, overrides: Mapping[str, Any]) -> RunSettings:
        """These settings with ``overrides`` (None = keep), validated.

        A threshold given without a tol keeps the band: when it reaches 1 (any score from T up
        to 1 is accepted), tol becomes 1 - threshold."""
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise GmcfError(
                f"unknown search setting(s) {unknown}; valid: {', '.join(self.names())}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "threshold" in given and "tol" not in given and self.score_ceiling >= 1.0:
            given["tol"] = max(1.0 - float(given["threshold"]), 1e-6)
        return replace(self, **given).validate()


#: The former name of ``RunSettings``, kept so that existing imports keep working.
SearchDefaults = RunSettings


def default_batch_size(width: int) -> int:
    """Rows per batch when none is given: 65,536 tabular rows; for wide inputs (images) about
    two million model-space entries per batch (2,674 images of 784 pixels), so that memory stays
    bounded and a file of a few thousand images still spreads over the workers."""
    return max(MIN_BATCH_SIZE, min(DEFAULT_BATCH_SIZE, WIDE_BATCH_ENTRIES // max(width, 1)))


def batch_size_for(batch_size: int | None, width: int) -> int:
    """The batch size of a run: the one given (checked), else ``default_batch_size(width)``."""
    if batch_size is None:
        return default_batch_size(width)
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    return batch_size


def check_workers(workers: int) -> int:
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    return workers


def check_threads(threads: int) -> int:
    if threads < 1:
        raise GmcfError(f"threads must be at least 1, got {threads}")
    return threads


def check_num_cfs(num_cfs: int) -> int:
    if num_cfs < 1:
        raise GmcfError(f"num_cfs must be at least 1, got {num_cfs}")
    return num_cfs
