"""The Explainer across processes (pickle, a spawned pool) and pandas in, pandas out."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import adult_queries

from gmcf.runtime import Explainer
from gmcf.runtime.interop import plain_schema, rebatch, to_plain


def test_used_explainer_pickles_and_reopens_its_sessions(adult_bundle: Path) -> None:
    ex = Explainer.from_bundle(adult_bundle, tol=0.3)
    queries = adult_queries(3000, seed=1)
    before = ex.explain(queries, id_column="id")
    assert ex._engine is not None  # used: onnxruntime sessions are open
    copy = pickle.loads(pickle.dumps(ex))
    assert copy._engine is None and ex._engine is not None  # the original keeps its sessions
    assert copy.settings == ex.settings and copy.settings.tol == 0.3
    after = copy.explain(queries, id_column="id")
    assert after.equals(before)


def test_spawned_pool_explains_with_a_pickled_explainer(adult_bundle: Path) -> None:
    ex = Explainer.from_bundle(adult_bundle, num_cfs=2)
    queries = adult_queries(4000, seed=2)
    ex.explain(queries.slice(0, 10))  # sessions open in the parent: they must not travel
    chunks = [queries.slice(i, 1000) for i in range(0, 4000, 1000)]
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        parts = list(pool.map(ex.explain, chunks, ["id"] * len(chunks)))
    expected = [ex.explain(c, id_column="id") for c in chunks]
    for got, want in zip(parts, expected, strict=True):
        assert got.equals(want)
    assert sum(p.num_rows for p in parts) >= 4000


def test_pandas_in_pandas_out(adult_bundle: Path) -> None:
    pd = pytest.importorskip("pandas")
    ex = Explainer.from_bundle(adult_bundle)
    table = adult_queries(2000, seed=3)
    df = table.to_pandas()
    df.index = pd.Index([f"applicant-{i}" for i in range(len(df))][::-1], name="who")
    df["age"] = df["age"].astype("Int64")
    df.loc["applicant-5", "age"] = pd.NA  # a bad row: explained as invalid, never dropped
    out = ex.explain(df, id_column="id")
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(df.index)
    assert out["id"].tolist() == df["id"].tolist() and out["id"].dtype == df["id"].dtype
    assert out.loc["applicant-5", "status"] == "invalid"
    assert "age" in out.loc["applicant-5", "reason"]
    want = {
        "cf_age": "Int64",
        "sparsity_l0": "Int32",
        "evaluations": "Int32",
        "status": "string",
        "cf_education": "string",
        "score": "float32",
        "age": "float64",
    }
    assert {k: str(out[k].dtype) for k in want} == want
    # The same rows and values as the Arrow result.
    arrow = ex.explain(pa.Table.from_pandas(df, preserve_index=False), id_column="id")
    for name in arrow.column_names:
        a = to_plain(arrow.select([name])).column(0).to_pylist()
        b = [
            None if v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v
            for v in out[name].tolist()
        ]
        a = [None if isinstance(v, float) and np.isnan(v) else v for v in a]
        assert a == b, name
    found = out["status"] == "found"
    assert out.loc[found, "cf_age"].notna().all() and out.loc[~found, "cf_age"].isna().all()
    # dtypes do not depend on the rows: an empty frame gives them (Dask's meta)
    empty = ex.explain(df.head(0), id_column="id")
    assert len(empty) == 0 and empty.dtypes.equals(out.dtypes)


def test_pandas_several_options_repeat_the_index(adult_bundle: Path) -> None:
    pytest.importorskip("pandas")
    ex = Explainer.from_bundle(adult_bundle, num_cfs=3)
    df = adult_queries(500, seed=4).to_pandas()
    df.index = df.index + 1000
    out = ex.explain(df, id_column="id")
    assert set(out.index) == set(df.index)
    # every output row sits under its query's index: the id agrees with the index
    assert (out["id"].to_numpy() == df.loc[out.index, "id"].to_numpy()).all()
    counts = out.groupby(level=0).size()
    assert counts.max() > 1
    ranks = out.groupby(level=0)["cf_rank"].max().fillna(1)
    assert (counts == ranks.astype(int)).all()


def test_pandas_errors_are_one_line(adult_bundle: Path) -> None:
    pd = pytest.importorskip("pandas")
    from gmcf.runtime import InputError

    ex = Explainer.from_bundle(adult_bundle)
    df = adult_queries(10).to_pandas()
    dup = pd.concat([df, df[["age"]]], axis=1)
    with pytest.raises(InputError, match="duplicate column names: age"):
        ex.explain(dup)
    with pytest.raises(InputError, match="lacks 1 feature column"):
        ex.explain(df.drop(columns=["education"]))


def test_plain_types_and_rebatch() -> None:
    schema = pa.schema(
        [
            ("s", pa.dictionary(pa.int8(), pa.string())),
            ("img", pa.list_(pa.float32(), 4)),
            ("l", pa.large_string()),
            ("x", pa.float32()),
        ]
    )
    assert plain_schema(schema).types == [
        pa.string(),
        pa.list_(pa.float32()),
        pa.string(),
        pa.float32(),
    ]
    batches = [
        pa.record_batch({"v": np.arange(i, i + n)}) for i, n in ((0, 7), (7, 0), (7, 5), (12, 9))
    ]
    tables = list(rebatch(batches, 8))
    assert [t.num_rows for t in tables] == [8, 8, 5]
    assert pa.concat_tables(tables).column("v").to_pylist() == list(range(21))


def _dask_explain(path: str, bundle: str, out: str) -> None:
    """Runs in a fresh interpreter: Dask's process scheduler spawns its workers."""
    import dask
    import dask.dataframe as dd

    dask.config.set(scheduler="processes", num_workers=2)
    ex = Explainer.from_bundle(bundle)
    ddf = dd.read_parquet(path).repartition(npartitions=3)
    ddf.map_partitions(
        ex.explain, id_column="id", meta=ex.explain(ddf._meta, id_column="id")
    ).to_parquet(out)


def test_dask_map_partitions_with_meta_from_an_empty_frame(
    adult_bundle: Path, tmp_path: Path
) -> None:
    """The failure Dask users hit: meta from the output schema broke at write time, and a used
    explainer could not be pickled or tokenized. Needs dask, which is not a project dependency."""
    pytest.importorskip("dask.dataframe", reason="dask is not installed (not a project dependency)")
    import subprocess
    import sys

    import pandas as pd
    import pyarrow.parquet as pq

    queries = adult_queries(1500, seed=8)
    pq.write_table(queries, tmp_path / "q.parquet")
    code = (
        f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}, "
        f"{str(Path(__file__).parents[1])!r}]; from test_interop import _dask_explain; "
        f"_dask_explain({str(tmp_path / 'q.parquet')!r}, {str(adult_bundle)!r}, "
        f"{str(tmp_path / 'out')!r})"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = pd.read_parquet(tmp_path / "out").sort_values("id")
    want = (
        Explainer.from_bundle(adult_bundle)
        .explain(queries.to_pandas(), id_column="id")
        .sort_values("id")
    )
    assert len(got) == 1500
    assert (got["status"].to_numpy() == want["status"].to_numpy()).all()
    assert str(got["cf_age"].dtype) == "Int64"


def test_one_explainer_per_process_and_plan(adult_bundle: Path, tmp_path: Path) -> None:
    """Engine workers open a bundle once per process and refuse one that differs from the
    driver's (say, a node with another version of the bundle under the same path)."""
    import hashlib
    import json
    import shutil

    from gmcf.runtime import BundleError
    from gmcf.runtime.interop import Plan, cached_explainer

    plan = Plan.of(Explainer.from_bundle(adult_bundle, tol=0.3, num_cfs=2))
    first = cached_explainer(plan)
    assert cached_explainer(plan) is first
    assert first.settings.tol == 0.3 and first.num_cfs == 2
    assert pickle.loads(pickle.dumps(plan)) == plan

    other = tmp_path / "other"
    shutil.copytree(adult_bundle, other)
    report = other / "report.json"
    report.write_text(report.read_text().replace("{", '{"retrained": true, ', 1))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["files"]["report.json"] = hashlib.sha256(report.read_bytes()).hexdigest()
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not the bundle the job was planned with"):
        cached_explainer(plan, other)
