"""Bundles trained from the shipped data by `gmcf-batch train`; see each manifest.json."""
