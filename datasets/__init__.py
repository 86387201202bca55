"""The datasets gmcf-batch ships, and loading of a user's table with a declared schema.

Loaders need only pyarrow, so the runtime's sample-query command can use them.
See ``ATTRIBUTION.md`` beside this file for provenance and licences.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
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

#: The 120k-loan LendingClub book: eleven features an applicant states or a credit file holds
#: (no FICO, no interest rate, no LendingClub grade). ``status`` has three values; a loan paid
#: in full is the favourable outcome, against Charged Off and Default.
LENDING_CLUB_BOOK_SCHEMA = DataSchema.from_dict(
    {
        "features": {
            "integer": ["loan_amnt", "annual_inc", "revol_bal", "open_acc", "emp_length"],
            "continuous": ["dti", "payment_inc_ratio", "revol_util"],
            "categorical": ["term", "purpose", "home_ownership"],
        },
        "label": "status",
        "positive_class": "Fully Paid",
    }
)


MNIST_SCHEMA = DataSchema.from_dict(
    {
        "features": [{"name": "pixels", "kind": "image", "shape": [28, 28]}],
        # The paper's base class is the digit 1, its target class the digit 7.
        "label": "digit",
        "positive_class": "7",
    }
)


@dataclass(frozen=True)
class Dataset:
    name: str
    table: pa.Table
    schema: DataSchema
    test_mask: np.ndarray | None = None
    """True for the rows of the data set's own held-out split (MNIST's official test set);
    None where the trainer draws a seeded random split."""


DATASETS = {
    "adult": ("adult.csv.gz", ADULT_SCHEMA),
    "lending-club": ("lendingclub_loan_data.csv.gz", LENDING_CLUB_SCHEMA),
    "mnist-1-to-7": ("mnist_1_7.npz", MNIST_SCHEMA),
    "lending-club-book": ("lendingclub_full_train_set.csv.gz", LENDING_CLUB_BOOK_SCHEMA),
}


def _read_csv(path: Path | str) -> pa.Table:
    import pyarrow.csv as pacsv

    return pacsv.read_csv(path)


def load_mnist_1_7() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every MNIST 1 and 7: (images uint8 [15170, 28, 28], digit uint8 [15170], is_test bool)."""
    with (
        resources.as_file(resources.files(__package__).joinpath("mnist_1_7.npz")) as p,
        np.load(p, allow_pickle=False) as d,
    ):
        return d["images"], d["labels"], d["split"] == "test"


def _mnist_table() -> tuple[pa.Table, np.ndarray]:
    images, digits, is_test = load_mnist_1_7()
    size = images[0].size
    pixels = pa.FixedSizeListArray.from_arrays(pa.array(images.reshape(-1)), size)
    return pa.table({"pixels": pixels, "digit": pa.array(digits.astype(np.int64))}), is_test


def load_dataset(name: str) -> Dataset:
    """Load a shipped dataset by name: ``adult``, ``lending-club`` or ``mnist-1-to-7``."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    fname, schema = DATASETS[name]
    if fname.endswith(".npz"):
        table, is_test = _mnist_table()
        return Dataset(name, table, schema, is_test)
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
        raise InputError(
            f"{path}: schema names column(s) the file lacks: {', '.join(map(repr, missing))}"
        )
    return Dataset(path.stem, table.select(needed), schema)


def heldout_base_rows(ds: Dataset) -> np.ndarray:
    """Row numbers of the held-out rows of the base class (the label is not the positive
    class); for MNIST, the 1,135 test-set 1s. Raises if the dataset has no held-out split."""
    import pyarrow.compute as pc

    if ds.test_mask is None:
        raise InputError(f"dataset {ds.name} has no held-out split of its own")
    label = pc.cast(ds.table.column(ds.schema.label), pa.string())
    base = np.asarray(
        pc.not_equal(label, ds.schema.positive_class).to_numpy(zero_copy_only=False), dtype=bool
    )
    return np.nonzero(ds.test_mask & base)[0]
