"""The public API: ``Explainer.from_bundle(path)``, ``explain(table)``, ``explain_parquet(src, dst)``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gmcf.runtime.bundle import Bundle, SearchDefaults, load_bundle
from gmcf.runtime.constraints import Constraints
from gmcf.runtime.errors import GmcfError, InputError
from gmcf.runtime.output import output_batch, output_schema, result_columns
from gmcf.runtime.plausibility import log_density
from gmcf.runtime.revert import revert_changes
from gmcf.runtime.schema import ImagePreprocessor, usable_rows
from gmcf.runtime.search import ALREADY, FOUND, INVALID, NOT_FOUND, Engine, SearchResult, search

#: Queries per call of the fused graph: B * steps candidate rows stay in cache.
SEARCH_CHUNK = 2048
DEFAULT_BATCH_SIZE = 65536
#: Distance, in standard deviations of the target class's Gaussian, of the extra walks' targets.
TARGET_SPREAD = 3.0
#: Model-space entries per chunk of queries for wide tabular rows (the limit binds above 98
#: entries per row; the shipped tables have 12 and 21).
WIDE_CHUNK_ENTRIES = 256 * 784
#: The same for images: 64 queries of 784 pixels. On the MNIST bundle 16, 64, 256 and 1,024
#: queries per call ran at the same speed (705-731 rows/s on one thread); 64 peaked at 468 MiB
#: against 837 MiB for 256.
IMAGE_CHUNK_ENTRIES = 64 * 784


def default_batch_size(width: int) -> int:
    """Rows per batch when none is given: 65,536 tabular rows; for wide inputs (images) about
    two million model-space entries per batch (2,674 images of 784 pixels), so that memory stays
    bounded and a file of a few thousand images still spreads over the workers."""
    return max(1024, min(DEFAULT_BATCH_SIZE, (1 << 21) // max(width, 1)))


def search_chunk(width: int, image: bool = False) -> int:
    """Queries per call of the fused graph: SEARCH_CHUNK for tabular rows (fewer for very wide
    ones), fewer for images, whose convolutional decoder would otherwise hold B * steps feature
    maps at once."""
    entries = IMAGE_CHUNK_ENTRIES if image else WIDE_CHUNK_ENTRIES
    return max(16, min(SEARCH_CHUNK, entries // max(width, 1)))


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
        counts = np.bincount(status.astype(np.int64), minlength=4)
        self.rows += len(status)
        self.found += int(counts[FOUND])
        self.already_target += int(counts[ALREADY])
        self.not_found += int(counts[NOT_FOUND])
        self.invalid += int(counts[INVALID])

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows, "found": self.found, "already_target": self.already_target,
            "not_found": self.not_found, "invalid": self.invalid,
            "validity": self.validity, "seconds": self.seconds,
        }


@dataclass
class Explainer:
    """Counterfactual explanations from a bundle, with onnxruntime on CPU (no torch).

    >>> ex = Explainer.from_bundle("exported/adult")
    >>> out = ex.explain(df)                      # pandas DataFrame or Arrow table in, Arrow out
    >>> ex.explain_parquet("in.parquet", "out.parquet", batch_size=65536)
    """

    bundle: Bundle
    settings: SearchDefaults
    threads: int = 1
    constraints: Constraints = field(default_factory=Constraints)
    num_cfs: int = 1
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
        revert: bool = True,
        **overrides: Any,
    ) -> Explainer:
        """Load and verify a bundle. ``overrides`` replace its search defaults
        (threshold, tol, steps, refine, extrapolate, max_alpha, ...); a threshold given without a
        tol keeps the bundle's band: when it reaches 1 (any score from T up to 1 is accepted),
        tol becomes 1 - threshold. ``constraints`` are merged
        over the bundle's default constraints (see ``gmcf.runtime.constraints``); ``num_cfs``
        asks for up to that many distinct counterfactuals per rejected query; ``revert=False``
        returns the latent walk's answer without putting back the changes f does not need."""
        if num_cfs < 1:
            raise GmcfError(f"num_cfs must be at least 1, got {num_cfs}")
        bundle = load_bundle(path)
        unknown = sorted(set(overrides) - set(SearchDefaults.__dataclass_fields__))
        if unknown:
            raise GmcfError(f"unknown search setting(s) {unknown}; valid: {', '.join(SearchDefaults.__dataclass_fields__)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "threshold" in given and "tol" not in given and bundle.search.threshold + bundle.search.tol >= 1.0:
            # The bundle accepts any score from T up to 1; so does a run that moves T alone.
            given["tol"] = max(1.0 - float(given["threshold"]), 1e-6)
        settings = replace(bundle.search, **given)
        validate_settings(settings)
        merged = Constraints.from_dict(bundle.manifest.get("constraints", {}))
        if constraints:
            merged = merged.merge(constraints)
        merged.validate(bundle.preprocessor)
        return cls(bundle, settings, threads, merged, num_cfs, revert)

    @property
    def _chunk(self) -> int:
        pre = self.bundle.preprocessor
        return search_chunk(pre.width, isinstance(pre, ImagePreprocessor))

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.bundle, self.threads)
        return self._engine

    # -- tables -------------------------------------------------------------------------------
    def explain(self, data: pa.Table | pa.RecordBatch | Any, id_column: str | None = None) -> pa.Table:
        """Explain every row of a table (Arrow table/batch or pandas DataFrame)."""
        table = _as_arrow(data)
        self._check_input(table.schema, id_column)
        schema = self._schema(table.schema, id_column)
        return pa.Table.from_batches([self._explain_batch(table, schema, id_column)], schema=schema)

    def _check_input(self, schema: pa.Schema, id_column: str | None) -> None:
        self.bundle.preprocessor.check_columns(schema)
        if id_column is not None and id_column not in schema.names:
            raise InputError(f"id column {id_column!r} is not in the input")

    def _schema(self, schema: pa.Schema, id_column: str | None) -> pa.Schema:
        id_field = schema.field(id_column) if id_column is not None else None
        return output_schema(self.bundle.preprocessor, id_field, ranked=self.num_cfs > 1)

    def _explain_batch(
        self, batch: pa.RecordBatch | pa.Table, schema: pa.Schema, id_column: str | None,
        summary: Summary | None = None,
    ) -> pa.RecordBatch:
        src, results = self._results(batch, summary)
        return output_batch(schema, self.bundle.preprocessor, batch, id_column, src, results)

    def _results(
        self, batch: pa.RecordBatch | pa.Table, summary: Summary | None = None
    ) -> tuple[np.ndarray | None, list[pa.Array]]:
        """Explain a batch: the output's result columns, and for K > 1 options the query row
        each output row repeats (None when output rows are the query rows, in order)."""
        pre = self.bundle.preprocessor
        x, reason = pre.transform(batch)
        ok = np.nonzero(usable_rows(reason))[0]
        targets = self._targets()
        walks = [SearchResult.empty(len(x), pre.width) for _ in targets]
        if self.constraints and ok.size:
            ok, reason = self._set_aside_unmeetable(x, reason, ok, walks)
        chunk = self._chunk
        for start in range(0, ok.size, chunk):
            rows = ok[start: start + chunk]
            xr = x[rows]
            bounds = self.constraints.bounds(pre, xr) if self.constraints else None
            score = self.engine.score(xr) if len(targets) > 1 else None
            for res, target in zip(walks, targets, strict=True):
                tgt = None if target is None else np.broadcast_to(target, (rows.size, target.size)).copy()
                part = search(self.engine, xr, self.settings, bounds, tgt, score)
                if self.revert:
                    self._revert(part, xr, bounds)
                res.assign(rows, part)
        upper = self.settings.threshold + self.settings.tol
        constrained = bool(self.constraints)
        if self.num_cfs == 1:
            res = walks[0]
            if summary is not None:
                summary.add(res.status)
            return None, result_columns(pre, x, reason, res, *self._quality(res), upper, constrained=constrained)
        src, rank, res = rank_options(walks, x, self.num_cfs)
        if summary is not None:
            summary.add(res.status[rank <= 1])
        return src, result_columns(
            pre, x[src], reason[src], res, *self._quality(res), upper, rank=rank, constrained=constrained
        )

    def _set_aside_unmeetable(
        self, x: np.ndarray, reason: np.ndarray, ok: np.ndarray, walks: list[SearchResult]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries whose constraints contradict each other (no row can meet them) are scored
        but not searched: ``already_target`` if f accepts them, else ``not_found`` with the
        reason. Returns the rows left to search and the updated reasons."""
        why = self.constraints.unmeetable(self.bundle.preprocessor, x[ok])
        stuck_at = why != None  # noqa: E711 - elementwise on an object array
        if not stuck_at.any():
            return ok, reason
        stuck = ok[stuck_at]
        score = self.engine.score(x[stuck])
        rejected = score < self.settings.threshold
        for res in walks:
            res.score[stuck] = score
            res.status[stuck] = np.where(rejected, NOT_FOUND, ALREADY)
        reason = reason.copy()
        reason[stuck[rejected]] = why[stuck_at][rejected]
        return ok[~stuck_at], reason

    def _revert(self, part: SearchResult, x: np.ndarray, bounds: tuple[np.ndarray, np.ndarray] | None) -> None:
        """The revert step on the found rows of one searched chunk (in place)."""
        hit = np.nonzero(part.status == FOUND)[0]
        if hit.size == 0 or isinstance(self.bundle.preprocessor, ImagePreprocessor):
            return  # an image is one feature: putting it back is the query itself
        s = self.settings
        b = None if bounds is None else (bounds[0][hit], bounds[1][hit])
        part.cf[hit], part.cf_score[hit], part.reverted[hit] = revert_changes(
            self.bundle.preprocessor, self.engine.score, x[hit], part.cf[hit], part.cf_score[hit],
            s.threshold, s.threshold + s.tol, b,
        )

    def _quality(self, res: SearchResult) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the reconstruction error and the plausibility of the counterfactual."""
        recon = np.full(len(res.status), np.nan, np.float32)
        plaus = np.full(len(res.status), np.nan, np.float32)
        hit = np.nonzero(res.status == FOUND)[0]
        chunk = self._chunk
        latent = self.bundle.manifest["latent"]
        mu, var = np.asarray(latent["mu"][1], np.float32), np.asarray(latent["var"][1], np.float32)
        for start in range(0, hit.size, chunk):
            rows = hit[start: start + chunk]
            recon[rows] = self.engine.reconstruction_error(res.cf[rows])
            plaus[rows] = log_density(self.engine.latent(res.cf[rows]), mu, var)
        return recon, plaus

    def _targets(self) -> list[np.ndarray | None]:
        """Latent points the walks head for: mu_1 first, then points on the edge of the target
        class's Gaussian, three standard deviations from mu_1 in fixed directions (2K - 1 walks
        for K). On held-out Adult rows, three standard deviations gave 2.66 distinct options per
        query for K = 3 against 2.19 at one, and options four times as far apart."""
        if self.num_cfs == 1:
            return [None]
        latent = self.bundle.manifest["latent"]
        mu = np.asarray(latent["mu"][1], np.float32)
        sd = np.sqrt(np.asarray(latent["var"][1], np.float32))
        dirs = np.random.default_rng(20240229).standard_normal((2 * self.num_cfs - 2, mu.size))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return [mu, *[(mu + TARGET_SPREAD * sd * d).astype(np.float32) for d in dirs]]

    # -- files --------------------------------------------------------------------------------
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
        src, dst = Path(src), Path(dst)
        batch_size = default_batch_size(self.bundle.preprocessor.width) if batch_size is None else batch_size
        pf, total, schema, columns = self._open_input(src, batch_size, id_column)
        summary = Summary(output=dst)
        t0 = time.perf_counter()
        with atomic_parquet_writer(dst, schema) as writer:
            for batch in read_batches(pf, src, batch_size, columns):
                writer.write_batch(self._explain_batch(batch, schema, id_column, summary))
                if progress:
                    progress(summary.rows, total)
        summary.seconds = time.perf_counter() - t0
        return summary

    def _open_input(
        self, src: Path, batch_size: int, id_column: str | None
    ) -> tuple[pq.ParquetFile, int, pa.Schema, list[str]]:
        """Check a query file before any row is read: (file, rows, output schema, columns)."""
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        pf = open_parquet(src)
        total = pf.metadata.num_rows
        if total == 0:
            raise InputError(f"{src}: the file has no rows")
        self._check_input(pf.schema_arrow, id_column)
        names = self.bundle.preprocessor.names
        columns = names + ([id_column] if id_column and id_column not in names else [])
        return pf, total, self._schema(pf.schema_arrow, id_column), columns


@contextmanager
def atomic_parquet_writer(dst: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A lean Parquet writer on a temporary file beside ``dst``, renamed into place on success
    and removed on any failure: no half-written output is ever left."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(tmp, schema, **writer_options(schema)) as writer:
            yield writer
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rank_options(
    walks: list[SearchResult], x: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, SearchResult]:
    """Merge the walks of every query into up to ``k`` distinct counterfactuals, nearest first.

    Returns, per output row, the query row it belongs to, its rank (1..k; 0 for a query with no
    counterfactual: already target, not found, or invalid) and its result."""
    n, width = x.shape
    w = len(walks)
    found = np.stack([r.status == FOUND for r in walks])  # [W, n]
    cf = np.stack([r.cf for r in walks])  # [W, n, F]
    dist = np.where(found, np.sqrt(((cf - x[None]) ** 2).sum(-1)), np.inf)
    order = np.argsort(dist, axis=0, kind="stable")  # [W, n], nearest walk first
    cols = np.arange(n)
    ranked_cf = cf[order, cols]  # [W, n, F]
    ranked_found = found[order, cols]
    # A walk is a new option if it found one and its row differs from every nearer walk's row
    # (equality is exact, so differing from every nearer walk = differing from every kept one).
    keep = ranked_found.copy()
    for j in range(1, w):
        same = (ranked_cf[:j] == ranked_cf[j][None]).all(axis=-1).any(axis=0)
        keep[j] &= ~same
    keep &= np.cumsum(keep, axis=0) <= k
    count = keep.sum(axis=0)  # options per query, 0..k
    # Output rows: a query's options in rank order, or one row when it has none.
    reps = np.maximum(count, 1)
    src = np.repeat(cols, reps)
    kept_q, kept_j = np.nonzero(keep.T)  # query by query, nearest first: the output's order
    rank = np.zeros(src.size, np.int64)
    pick = np.zeros(src.size, np.int64)
    slots = np.nonzero(np.repeat(count > 0, reps))[0]
    rank[slots] = np.cumsum(keep, axis=0)[kept_j, kept_q]
    pick[slots] = order[kept_j, kept_q]
    out = SearchResult.empty(src.size, width)
    for name in SearchResult.FIELDS:
        stacked = cf if name == "cf" else np.stack([getattr(r, name) for r in walks])  # cf: stacked above
        getattr(out, name)[:] = stacked[pick, src]
    out.evaluations[:] = np.stack([r.evaluations for r in walks]).sum(axis=0)[src]
    return src, rank, out


def validate_settings(s: SearchDefaults) -> None:
    if not 0.0 < s.threshold < 1.0:
        raise GmcfError(f"threshold must be in (0, 1), got {s.threshold}")
    if s.tol <= 0.0:
        raise GmcfError(f"tol must be positive, got {s.tol}")
    if s.steps < 1:
        raise GmcfError(f"steps must be at least 1, got {s.steps}")
    if s.refine_points < 1 or s.refine_rounds < 0:
        raise GmcfError("refine_points must be >= 1 and refine_rounds >= 0")
    if s.max_alpha < 1.0:
        raise GmcfError(f"max_alpha must be at least 1, got {s.max_alpha}")


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Lean Parquet writer: dictionary encoding only where it pays, no column statistics."""
    dict_cols = [
        f.name for f in schema
        if pa.types.is_dictionary(f.type) or pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    return {"compression": "snappy", "use_dictionary": dict_cols, "write_statistics": False}


def open_parquet(src: Path) -> pq.ParquetFile:
    if not src.exists():
        raise InputError(f"input file {src} does not exist")
    if src.is_dir():
        raise InputError(f"input {src} is a folder, not a Parquet file")
    try:
        return pq.ParquetFile(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"{src} is not a Parquet file ({str(exc).splitlines()[0]})") from exc


def read_batches(pf: pq.ParquetFile, src: Path, batch_size: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_size`` rows, one row group at a time.

    A single ``iter_batches`` over the whole file lets pyarrow's resident memory creep up with
    the file's length (about 10 MiB per million rows here); a fresh iterator per row group
    stays flat. A corrupt data page is reported as an InputError naming the file."""
    for group in range(pf.num_row_groups):
        batches = pf.iter_batches(batch_size=batch_size, columns=columns, row_groups=[group])
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{src}: cannot read the Parquet data ({str(exc).splitlines()[0]})") from exc
            yield batch


def _as_arrow(data: Any) -> pa.Table | pa.RecordBatch:
    if isinstance(data, pa.Table | pa.RecordBatch):
        return data
    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is a dependency
        raise GmcfError("pandas is needed to explain a DataFrame") from exc
    if isinstance(data, pd.DataFrame):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise InputError(f"expected a pyarrow Table or pandas DataFrame, got {type(data).__name__}")
