"""Errors the runtime raises for bad input. Each message is one line that names the problem."""


class GmcfError(Exception):
    """Base class of every error gmcf-batch reports to its user."""


class InputError(GmcfError, ValueError):
    """The input data (a file, a table, a column) cannot be used as a whole."""


class SchemaError(GmcfError, ValueError):
    """A feature schema is malformed or does not fit the data."""


class BundleError(GmcfError):
    """A bundle is missing, altered, or of an unsupported format."""


class ConstraintError(GmcfError, ValueError):
    """A constraint does not fit the bundle's features."""


class OutputError(GmcfError):
    """The output cannot be written or published: a missing folder, permissions, a read-only or
    full disk, the input's own file, or a file that is already there."""
