"""What became of each query row: the status codes and texts, the search kinds, the texts of a
``not_found`` row's reason, and the counts of a run (``Summary``).

Codes are small integers while a batch is searched; they become the output's dictionary-encoded
``status`` and ``search`` columns, whose texts are the tuples below (code = index).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Row status texts; a row's code is the index of its text.
STATUSES = ("found", "already_target", "not_found", "invalid")
FOUND, ALREADY, NOT_FOUND, INVALID = range(4)
#: How a counterfactual was found; -1 where none was.
SEARCH_KINDS = ("grid", "refined", "extrapolated", "anchored")
GRID, REFINED, EXTRAPOLATED, ANCHORED = range(4)

NEVER_CROSSED = "the path never crossed the threshold"
WITHIN_CONSTRAINTS = " within the constraints"


def overshoot_reason(score: float, score_ceiling: float) -> str:
    """Reason of a row whose path crossed the threshold only above threshold + tol."""
    return (
        f"crossed the threshold only with score {score:.3f} >= threshold + tol "
        f"({score_ceiling:.3f})"
    )


def never_crossed_reason(constrained: bool) -> str:
    return NEVER_CROSSED + (WITHIN_CONSTRAINTS if constrained else "")


@dataclass
class Summary:
    """Counts of one run, as printed by the CLI."""

    rows: int = 0
    found: int = 0
    already_target: int = 0
    not_found: int = 0
    invalid: int = 0
    seconds: float = 0.0
    output: Path | None = None

    @property
    def searched(self) -> int:
        return self.found + self.not_found

    @property
    def validity(self) -> float:
        """Share of searched rows (f below the threshold) that got a counterfactual."""
        return self.found / self.searched if self.searched else float("nan")

    def add(self, status: np.ndarray) -> None:
        """Count the status codes of some query rows (each query once)."""
        counts = np.bincount(status.astype(np.int64), minlength=len(STATUSES))
        self.rows += len(status)
        self.found += int(counts[FOUND])
        self.already_target += int(counts[ALREADY])
        self.not_found += int(counts[NOT_FOUND])
        self.invalid += int(counts[INVALID])

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "found": self.found,
            "already_target": self.already_target,
            "not_found": self.not_found,
            "invalid": self.invalid,
            "validity": self.validity,
            "seconds": self.seconds,
        }
