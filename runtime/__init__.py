"""gmcf-batch runtime: counterfactual search with onnxruntime on CPU. Imports no torch."""

from gmcf.runtime.bundle import Bundle, SearchDefaults, load_bundle
from gmcf.runtime.errors import BundleError, GmcfError, InputError, SchemaError
from gmcf.runtime.explainer import Explainer, Summary
from gmcf.runtime.output import RESULT_COLUMNS, output_schema

__all__ = [
    "RESULT_COLUMNS",
    "Bundle",
    "BundleError",
    "Explainer",
    "GmcfError",
    "InputError",
    "SchemaError",
    "SearchDefaults",
    "Summary",
    "load_bundle",
    "output_schema",
]
