"""The public API: ``Explainer.from_bundle(path)``, ``explain(table)``,
``explain_parquet(src, dst)``.

A query row follows one path (docs/design.md): read (``runtime.read``) -> encode
(``runtime.encode``) -> search (``runtime.search``) -> decode (``runtime.decode``) -> write
(``runtime.output`` assembles a batch, ``runtime.write`` writes the file); ``runtime.run`` is the
loop over a file, in this process or in a process pool (``runtime.parallel``). Names that
lived here before (``DEFAULT_BATCH_SIZE``, ``Summary``, ``atomic_parquet_writer`` ...) are still
imported from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from threadpoolctl import threadpool_limits

from gmcf.runtime.bundle import Bundle, load_bundle
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.decode import ExplainedBatch, decode
from gmcf.runtime.encode import as_arrow, encode
from gmcf.runtime.engine import Engine
from gmcf.runtime.errors import GmcfError
from gmcf.runtime.output import output_batch, output_schema
from gmcf.runtime.read import check_input
from gmcf.runtime.read import open_parquet as open_parquet
from gmcf.runtime.read import read_batches as read_batches
from gmcf.runtime.schema import DEFAULT_RANGE_MARGIN
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

if TYPE_CHECKING:  # pragma: no cover - pandas is imported only when a DataFrame is given
    import pandas as pd


@dataclass
class Explainer:
    """Counterfactual explanations from a bundle, with onnxruntime on CPU (no torch).

    >>> ex = Explainer.from_bundle("exported/adult")
    >>> out = ex.explain(table)  # Arrow in, Arrow out; a DataFrame gives a DataFrame
    >>> ex.explain_parquet("in.parquet", "out.parquet", batch_size=65536)
    """

    bundle: Bundle
    settings: RunSettings
    threads: int = 1
    constraints: Constraints = field(default_factory=Constraints)
    num_cfs: int = 1
    range_margin: float = DEFAULT_RANGE_MARGIN
    revert: bool = True
    """Put back the changes f does not need (``gmcf.runtime.revert``); False: the latent answer."""
    _engine: Engine | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        threads: int = 1,
        constraints: Constraints | dict[str, Any] | None = None,
        num_cfs: int = 1,
        range_margin: float | None = None,
        revert: bool = True,
        **overrides: Any,
    ) -> Explainer:
        """Load and verify a bundle. ``overrides`` replace its run settings (threshold, tol,
        steps, refine, extrapolate, max_alpha, ...; see ``RunSettings.override``).
        ``constraints`` are merged over the bundle's default constraints (see
        ``gmcf.runtime.constraints``); ``num_cfs`` asks for up to that many distinct
        counterfactuals per rejected query. ``range_margin`` (default ``DEFAULT_RANGE_MARGIN``):
        a numeric value more than this share of the training range beyond it makes its row
        invalid (docs/nightly.md); ``revert=False`` returns the latent walk's answer
        without putting back the changes f does not need."""
        check_num_cfs(num_cfs)
        margin = DEFAULT_RANGE_MARGIN if range_margin is None else float(range_margin)
        if not margin >= 0.0:
            raise GmcfError(f"range margin must be 0 or more, got {range_margin}")
        bundle = load_bundle(path)
        pre = replace(bundle.preprocessor, range_margin=margin)
        bundle = replace(bundle, manifest=replace(bundle.manifest, preprocessing=pre))
        settings = bundle.search.override(overrides)
        merged = Constraints.from_dict(bundle.manifest.constraints)
        if constraints:
            merged = merged.merge(constraints)
        merged.validate(bundle.preprocessor)
        return cls(bundle, settings, threads, merged, num_cfs, margin, revert)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its onnxruntime sessions (they cannot be pickled): a copy reopens
        them from ``bundle.path`` on first use, so joblib, Dask and spawned pools can take it."""
        return {**self.__dict__, "_engine": None}

    def __dask_tokenize__(self) -> str:
        """Dask's token of the explainer: the bundle's files and the run's settings (not its
        sessions, which Dask cannot hash)."""
        files = sorted(self.bundle.manifest.files.items())
        return repr(
            (
                str(self.bundle.path),
                files,
                self.settings.to_dict(),
                self.constraints.to_dict(),
                self.threads,
                self.num_cfs,
                self.revert,
            )
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.bundle, self.threads)
        return self._engine

    # -- one batch, step by step --------------------------------------------------------------
    def search_batch(self, batch: pa.RecordBatch | pa.Table) -> BatchResult:
        """Encode and search a batch of queries (the feature columns are enough)."""
        encoded = encode(self.bundle.preprocessor, batch)
        # numpy's BLAS (the last resort's distances) on the run's threads, like onnxruntime
        with threadpool_limits(limits=self.threads, user_api="blas"):
            return search_batch(
                self.engine, encoded, self.settings, self.constraints, self.num_cfs, self.revert
            )

    def explain_batch(self, batch: pa.RecordBatch | pa.Table) -> ExplainedBatch:
        """The result columns of a batch of queries: encode, search, decode."""
        return decode(self.bundle.preprocessor, self.search_batch(batch))

    def output_schema(self, input_schema: pa.Schema, id_column: str | None = None) -> pa.Schema:
        """The output's schema for an input of ``input_schema``."""
        id_field = input_schema.field(id_column) if id_column is not None else None
        return output_schema(self.bundle.preprocessor, id_field, ranked=self.num_cfs > 1)

    # -- tables and files ---------------------------------------------------------------------
    def explain(
        self, data: pa.Table | pa.RecordBatch | pd.DataFrame, id_column: str | None = None
    ) -> pa.Table | pd.DataFrame:
        """Explain every row of a table: an Arrow table or batch gives an Arrow table; a pandas
        DataFrame gives a DataFrame with its index (see ``gmcf.runtime.frames``)."""
        from gmcf.runtime.frames import explain_frame, is_frame

        if is_frame(data):
            return explain_frame(self, data, id_column)
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
        force: bool = False,
    ) -> Summary:
        """Stream ``src`` through the search into ``dst``, ``batch_size`` rows at a time
        (default: ``default_batch_size`` of the bundle's input width).

        Memory is bounded by the batch size, not the file. The output is written to a temporary
        file beside ``dst`` and moved into place when complete; an existing ``dst`` (even one
        that appears during the run) is replaced only with ``force``, and never when it is
        ``src`` itself (``runtime.publish``). ``progress(done, total)`` is called after each
        batch.
        """
        from gmcf.runtime.run import explain_file

        return explain_file(self, src, dst, batch_size, id_column, progress, force=force)


def validate_settings(s: RunSettings) -> None:
    """Kept for existing callers: ``RunSettings.validate``."""
    s.validate()
