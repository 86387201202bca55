"""The datasets gmcf-batch ships, and loading of a user's table with a declared schema.

Loaders need only pandas and pyarrow, so the runtime's sample-query command can use them.
See ``ATTRIBUTION.md`` beside this file for provenance and licences.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pyarrow as pa

from gmcf.runtime.errors import InputError
from gmcf.runtime.schema import DataSchema

ADULT_SCHEMA = DataSchema.from_dict(
    {
        "features": {
            "integer": ["age", "education-num", "capital-gain", "capital-loss", "hours-per-week"],
            "categorical": ["education"],
        },
        "label": "income",
        "positive_class": ">50K",
    }
)

LENDING_CLUB_SCHEMA = DataSchema.from_dict(
    {
        "features": {
            "continuous": ["int.rate", "installment", "log.annual.inc", "dti"],
            "integer": ["fico"],
            "categorical": ["purpose"],
        },
        # The favourable outcome is a loan that is paid back in full (not.fully.paid == 0).
        "label": "not.fully.paid",
        "positive_class": "0",
    }
)


@dataclass(frozen=True)
class Dataset:
    name: str
    table: pa.Table
    schema: DataSchema


DATASETS = {"adult": ("adult.csv.gz", ADULT_SCHEMA), "lending-club": ("lendingclub_loan_data.csv.gz", LENDING_CLUB_SCHEMA)}


def _read_csv(path: Path | str) -> pa.Table:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path)


def load_dataset(name: str) -> Dataset:
    """Load a shipped dataset by name: ``adult`` or ``lending-club``."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    fname, schema = DATASETS[name]
    with resources.as_file(resources.files(__package__).joinpath(fname)) as p:
        table = _read_csv(p)
    cols = [f.name for f in schema.features] + [schema.label]
    return Dataset(name, table.select(cols), schema)


def load_table(path: Path, schema: DataSchema) -> Dataset:
    """Load a user's CSV or Parquet file and check it against ``schema``."""
    if not path.exists():
        raise InputError(f"data file {path} does not exist")
    try:
        if path.suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            table = _read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from exc
    needed = [f.name for f in schema.features] + [schema.label]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: schema names column(s) the file lacks: {', '.join(map(repr, missing))}")
    return Dataset(path.stem, table.select(needed), schema)
