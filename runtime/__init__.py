"""gmcf-batch runtime: counterfactual search with onnxruntime on CPU. Imports no torch."""

from gmcf.runtime.bundle import Bundle, load_bundle
from gmcf.runtime.errors import BundleError, GmcfError, InputError, SchemaError
from gmcf.runtime.explainer import Explainer
from gmcf.runtime.manifest import Manifest
from gmcf.runtime.output import RESULT_COLUMNS, output_schema
from gmcf.runtime.settings import RunSettings, SearchDefaults
from gmcf.runtime.status import Summary

__all__ = [
    "RESULT_COLUMNS",
    "Bundle",
    "BundleError",
    "Explainer",
    "GmcfError",
    "InputError",
    "Manifest",
    "RunSettings",
    "SchemaError",
    "SearchDefaults",
    "Summary",
    "load_bundle",
    "output_schema",
]
