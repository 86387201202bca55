"""The public API: ``Explainer.from_bundle(path)``, ``explain(table)``, ``explain_parquet(src, dst)``.

A query row follows one path (docs/design.md): read (``runtime.read``) -> encode
(``runtime.encode``) -> search (``runtime.search``) -> decode (``runtime.decode``) -> write
(``runtime.output`` assembles a batch, ``runtime.write`` writes the file); ``runtime.run`` is the
loop over a file, in this process or in a process pool (``runtime.parallel``). Names that
lived here before (``DEFAULT_BATCH_SIZE``, ``Summary``, ``atomic_parquet_writer`` ...) are still
imported from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from gmcf.runtime.bundle import Bundle, load_bundle
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.decode import ExplainedBatch, decode
from gmcf.runtime.encode import as_arrow, encode
from gmcf.runtime.engine import Engine
from gmcf.runtime.output import output_batch, output_schema
from gmcf.runtime.read import check_input
from gmcf.runtime.read import open_parquet as open_parquet
from gmcf.runtime.read import read_batches as read_batches
from gmcf.runtime.search import SEARCH_CHUNK as SEARCH_CHUNK
from gmcf.runtime.search import TARGET_SPREAD as TARGET_SPREAD
from gmcf.runtime.search import BatchResult, search_batch
from gmcf.runtime.search import rank_options as rank_options
from gmcf.runtime.search import search_chunk as search_chunk
from gmcf.runtime.settings import DEFAULT_BATCH_SIZE as DEFAULT_BATCH_SIZE
from gmcf.runtime.settings import RunSettings, check_num_cfs
from gmcf.runtime.settings import default_batch_size as default_batch_size
from gmcf.runtime.status import Summary as Summary
from gmcf.runtime.write import atomic_parquet_writer as atomic_parquet_writer
from gmcf.runtime.write import writer_options as writer_options


@dataclass
class Explainer:
    """Counterfactual explanations from a bundle, with onnxruntime on CPU (no torch).

    >>> ex = Explainer.from_bundle("exported/adult")
    >>> out = ex.explain(df)                      # pandas DataFrame or Arrow table in, Arrow out
    >>> ex.explain_parquet("in.parquet", "out.parquet", batch_size=65536)
    """

    bundle: Bundle
    settings: RunSettings
    threads: int = 1
    constraints: Constraints = field(default_factory=Constraints)
    num_cfs: int = 1
    _engine: Engine | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        threads: int = 1,
        constraints: Constraints | dict[str, Any] | None = None,
        num_cfs: int = 1,
        **overrides: Any,
    ) -> Explainer:
        """Load and verify a bundle. ``overrides`` replace its run settings (threshold, tol,
        steps, refine, extrapolate, max_alpha, ...; see ``RunSettings.override``).
        ``constraints`` are merged over the bundle's default constraints (see
        ``gmcf.runtime.constraints``); ``num_cfs`` asks for up to that many distinct
        counterfactuals per rejected query."""
        check_num_cfs(num_cfs)
        bundle = load_bundle(path)
        settings = bundle.search.override(overrides)
        merged = Constraints.from_dict(bundle.manifest.constraints)
        if constraints:
            merged = merged.merge(constraints)
        merged.validate(bundle.preprocessor)
        return cls(bundle, settings, threads, merged, num_cfs)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.bundle, self.threads)
        return self._engine

    # -- one batch, step by step --------------------------------------------------------------
    def search_batch(self, batch: pa.RecordBatch | pa.Table) -> BatchResult:
        """Encode and search a batch of queries (the feature columns are enough)."""
        encoded = encode(self.bundle.preprocessor, batch)
        return search_batch(self.engine, encoded, self.settings, self.constraints, self.num_cfs)

    def explain_batch(self, batch: pa.RecordBatch | pa.Table) -> ExplainedBatch:
        """The result columns of a batch of queries: encode, search, decode."""
        return decode(self.bundle.preprocessor, self.search_batch(batch))

    def output_schema(self, input_schema: pa.Schema, id_column: str | None = None) -> pa.Schema:
        """The output's schema for an input of ``input_schema``."""
        id_field = input_schema.field(id_column) if id_column is not None else None
        return output_schema(self.bundle.preprocessor, id_field, ranked=self.num_cfs > 1)

    # -- tables and files ---------------------------------------------------------------------
    def explain(self, data: pa.Table | pa.RecordBatch | Any, id_column: str | None = None) -> pa.Table:
        """Explain every row of a table (Arrow table/batch or pandas DataFrame)."""
        table = as_arrow(data)
        pre = self.bundle.preprocessor
        check_input(pre, table.schema, id_column)
        schema = self.output_schema(table.schema, id_column)
        out = output_batch(schema, pre, table, id_column, self.explain_batch(table))
        return pa.Table.from_batches([out], schema=schema)

    def explain_parquet(
        self,
        src: str | Path,
        dst: str | Path,
        batch_size: int | None = None,
        id_column: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Summary:
        """Stream ``src`` through the search into ``dst``, ``batch_size`` rows at a time
        (default: ``default_batch_size`` of the bundle's input width).

        Memory is bounded by the batch size, not the file. The output is written to a temporary
        file beside ``dst`` and renamed into place when complete. ``progress(done, total)`` is
        called after each batch.
        """
        from gmcf.runtime.run import explain_file

        return explain_file(self, src, dst, batch_size, id_column, progress)


def validate_settings(s: RunSettings) -> None:
    """Kept for existing callers: ``RunSettings.validate``."""
    s.validate()
