"""Explain a Parquet file or folder with Spark and write a folder of Parquet parts.

    PYSPARK_PYTHON=$(which python) spark-submit --master 'local[2]' scripts/spark_explain.py \\
        queries.parquet explained/ --id-column id

On a cluster, gmcf-batch must be installed in the executors' Python (or shipped as an archive of
a virtual environment), and the bundle either on a path every node reads or shipped with the job
(``--ship-bundle``). See docs/engines.md.
"""

from __future__ import annotations

import argparse
import time

from pyspark.sql import SparkSession

from gmcf.runtime.spark import explain_spark


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("input", help="Parquet file or folder (any path Spark reads)")
    p.add_argument("output", help="output folder (Parquet parts)")
    p.add_argument(
        "--bundle", default=None, help="bundle folder [default: the shipped Adult bundle]"
    )
    p.add_argument("--id-column", default=None)
    p.add_argument(
        "--ship-bundle",
        action="store_true",
        help="send the bundle with the job (SparkContext.addFile)",
    )
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--num-cfs", type=int, default=1)
    a = p.parse_args()
    if a.bundle is None:
        from gmcf.cli.main import default_bundle

        a.bundle = str(default_bundle())
    spark = SparkSession.builder.appName("gmcf-explain").getOrCreate()
    t0 = time.perf_counter()
    df = spark.read.parquet(a.input)
    out = explain_spark(
        df, a.bundle, id_column=a.id_column, ship_bundle=a.ship_bundle, tol=a.tol, num_cfs=a.num_cfs
    )
    out.write.mode("errorifexists").parquet(a.output)
    counts = {
        r["status"]: r["count"]
        for r in spark.read.parquet(a.output).groupBy("status").count().collect()
    }
    print(f"wrote {a.output} in {time.perf_counter() - t0:.1f} s: {counts}")
    spark.stop()


if __name__ == "__main__":
    main()
