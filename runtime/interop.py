"""What the engines (Spark, Ray, pools of processes) need around an ``Explainer``.

- **Plain types at the boundary.** The explanation's string columns are dictionary-encoded and
  its images are fixed-size lists: compact in Parquet, but Spark's JVM cannot read dictionary
  arrays and engines concatenate blocks whose dictionaries differ. ``plain_schema`` and
  ``to_plain`` give the same columns as plain strings and variable-size lists.
- **One explainer per process.** Opening a bundle verifies its checksums and opens onnxruntime
  sessions: ``cached_explainer`` does it once per worker process and settings, and checks that the
  bundle a worker reads is the one the job was planned with.
- **Batches of a useful size.** Engines hand over small batches (Spark: 10,000 rows);
  ``rebatch`` joins them into batches of the explainer's default size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from gmcf.runtime.errors import BundleError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.settings import batch_size_for


def plain_type(t: pa.DataType) -> pa.DataType:
    """``t`` without dictionary encoding, large or fixed-size variants: what every engine reads."""
    if pa.types.is_dictionary(t):
        return plain_type(t.value_type)
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t):
        return pa.list_(plain_type(t.value_type))
    return t


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, plain_type(f.type), nullable=True) for f in schema])


def to_plain(table: pa.Table, schema: pa.Schema | None = None) -> pa.Table:
    """``table`` cast to ``schema`` (default: ``plain_schema`` of its own)."""
    return table.cast(plain_schema(table.schema) if schema is None else schema)


@dataclass(frozen=True)
class Plan:
    """How a worker rebuilds the driver's explainer: the bundle folder, the settings, and the
    bundle's file checksums (a worker refuses a bundle that differs from the driver's)."""

    bundle: str
    threads: int
    num_cfs: int
    settings: dict[str, Any]
    constraints: dict[str, Any]
    files: dict[str, str]

    @classmethod
    def of(cls, ex: Explainer) -> Plan:
        return cls(
            str(ex.bundle.path),
            ex.threads,
            ex.num_cfs,
            ex.settings.to_dict(),
            ex.constraints.to_dict(),
            dict(ex.bundle.manifest.files),
        )

    def key(self, bundle: str | None = None) -> str:
        d = {**self.__dict__, "bundle": bundle or self.bundle}
        return json.dumps(d, sort_keys=True, default=str)

    def open(self, bundle: str | Path | None = None) -> Explainer:
        """The explainer, from ``bundle`` (default: the driver's path)."""
        path = Path(bundle or self.bundle)
        ex = Explainer.from_bundle(
            path,
            threads=self.threads,
            constraints=self.constraints,
            num_cfs=self.num_cfs,
            **self.settings,
        )
        if dict(ex.bundle.manifest.files) != self.files:
            raise BundleError(
                f"bundle {path}: not the bundle the job was planned with (its files differ)"
            )
        return ex


_CACHE: dict[str, Explainer] = {}


def cached_explainer(plan: Plan, bundle: str | Path | None = None) -> Explainer:
    """The explainer of ``plan`` in this process, opened on first use and kept."""
    key = plan.key(None if bundle is None else str(bundle))
    ex = _CACHE.get(key)
    if ex is None:
        ex = _CACHE[key] = plan.open(bundle)
    return ex


def rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Tables of ``rows`` rows (the last one shorter) from a stream of smaller batches, in order."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending = rest.to_batches()
            held = rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def batch_rows(ex: Explainer, batch_size: int | None) -> int:
    return int(batch_size_for(batch_size, ex.bundle.preprocessor.width))
