"""Spark (local[2]) and Ray (one local node) explain a small file exactly as the CLI does.

One SparkSession and one Ray runtime serve the whole test session; each engine's tests skip,
with the reason, where its extra (``pip install '.[spark]'``, ``'.[ray]'``) or Java is missing."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import adult_queries

from gmcf.runtime import Explainer, InputError
from gmcf.runtime.interop import to_plain

ROWS = 3000


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 real Adult rows in four row groups, one with a missing age (an invalid row)."""
    table = adult_queries(ROWS, seed=11)
    age = table.column("age").to_pylist()
    age[17] = None
    table = table.set_column(table.schema.get_field_index("age"), "age", pa.array(age, pa.int64()))
    path = tmp_path_factory.mktemp("engines") / "queries.parquet"
    pq.write_table(table, path, row_group_size=800)
    return path


@pytest.fixture(scope="module")
def expected(
    small_file: Path, adult_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> pa.Table:
    """What the CLI's explain writes for the small file, in plain types."""
    out = tmp_path_factory.mktemp("cli") / "out.parquet"
    Explainer.from_bundle(adult_bundle).explain_parquet(small_file, out, id_column="id")
    return to_plain(pq.read_table(out))


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Same columns and types; by id, the same status, reason and every cf column exactly, and
    the other numbers to float32 rounding (f and the reconstruction see other batch shapes)."""
    assert got.schema.equals(want.schema), (got.schema, want.schema)
    got, want = got.sort_by("id"), want.sort_by("id")
    assert got.column("id").equals(want.column("id"))
    exact = [
        "status",
        "reason",
        "search",
        "evaluations",
        "sparsity_l0",
        *[n for n in want.column_names if n.startswith("cf_")],
    ]
    for name in [n for n in want.column_names if n != "id"]:
        if name in exact or not pa.types.is_floating(want.schema.field(name).type):
            assert got.column(name).equals(want.column(name)), name
        else:
            a = got.column(name).to_numpy(zero_copy_only=False)
            b = want.column(name).to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=name)
    assert want.column("status").to_pylist().count("invalid") == 1


# -- Spark --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.skip("Spark needs Java 17 (no java on PATH, no JAVA_HOME)")
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter
    session = (
        SparkSession.builder.master("local[2]")
        .appName("gmcf-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000")
        .config("spark.sql.files.maxPartitionBytes", "16k")  # the small file in several partitions
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


pyspark_warnings = pytest.mark.filterwarnings(
    "ignore::FutureWarning:pyspark.*", "ignore::DeprecationWarning:pyspark.*"
)


@pyspark_warnings
def test_spark_gives_the_cli_rows(
    spark: object, small_file: Path, adult_bundle: Path, expected: pa.Table
) -> None:
    from gmcf.runtime.spark import explain_spark

    df = spark.read.parquet(str(small_file))  # type: ignore[attr-defined]
    assert df.rdd.getNumPartitions() > 1
    out = explain_spark(df, adult_bundle, id_column="id", batch_size=700)
    types = {f.name: f.dataType.simpleString() for f in out.schema.fields}
    assert (
        types["status"] == "string"
        and types["cf_education"] == "string"
        and types["cf_age"] == "bigint"
    )
    assert types["id"] == "bigint" and types["sparsity_l0"] == "int"
    got = out.toArrow()
    assert got.num_rows == ROWS
    assert_same_rows(to_plain(got), expected)


@pyspark_warnings
def test_spark_ships_the_bundle_and_refuses_bad_input_on_the_driver(
    spark: object, small_file: Path, adult_bundle: Path, expected: pa.Table, tmp_path: Path
) -> None:
    from gmcf.runtime.spark import explain_spark

    copy = tmp_path / "bundle-copy"
    shutil.copytree(adult_bundle, copy)
    df = spark.read.parquet(str(small_file))  # type: ignore[attr-defined]
    out = explain_spark(df, copy, id_column="id", ship_bundle=True)
    assert_same_rows(to_plain(out.toArrow()), expected)
    with pytest.raises(InputError, match="lacks 1 feature column"):
        explain_spark(df.drop("education"), adult_bundle)
    with pytest.raises(InputError, match="id column 'nope'"):
        explain_spark(df, adult_bundle, id_column="nope")


# -- Ray ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_local() -> Iterator[object]:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    pytest.importorskip("ray.data", reason="the ray extra is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.filterwarnings(
    "ignore::UserWarning:ray.*", "ignore::DeprecationWarning", "ignore::FutureWarning"
)
def test_ray_gives_the_cli_rows_in_order(
    ray_local: object, small_file: Path, adult_bundle: Path, expected: pa.Table
) -> None:
    import ray

    from gmcf.runtime.ray import explain_ray

    ds = ray.data.read_parquet(str(small_file), override_num_blocks=4)
    out = explain_ray(ds, adult_bundle, id_column="id", batch_size=500)
    got = pa.concat_tables([ray.get(ref) for ref in out.to_arrow_refs()])
    assert got.num_rows == ROWS
    assert got.column("id").equals(expected.column("id"))  # input order, as the CLI's
    assert_same_rows(got, expected)
    with pytest.raises(InputError, match="lacks 1 feature column"):
        explain_ray(ds.drop_columns(["education"]), adult_bundle)


def test_ray_actors_leave_a_cpu_for_reads() -> None:
    from gmcf.runtime.ray import actor_resources

    assert actor_resources(2.0) == (2, 0.5)  # the machine that hung with one CPU per actor
    assert actor_resources(1.0) == (1, 0.0)
    assert actor_resources(8.0, concurrency=4) == (4, 1.0)
    for cpus in (1.0, 2.0, 3.0, 16.0):
        actors, each = actor_resources(cpus)
        assert actors * each <= max(cpus - 1.0, 0.0) + 1e-9
