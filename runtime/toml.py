"""TOML files on every supported Python: ``tomllib`` from 3.11, the ``tomli`` backport before."""

from __future__ import annotations

import sys
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by CI on the lowest supported Python
    import tomli as tomllib


def loads(text: str) -> dict[str, Any]:
    return tomllib.loads(text)
