"""The few typed errors fmctr raises; the CLI turns each into one `error:` line."""


class FmctrError(Exception):
    """Base class: a problem the user can fix, with a message written for them."""


class BadInput(FmctrError):
    """The data file is missing, empty or malformed."""


class BadSchema(FmctrError):
    """The schema (flags, schema file or preset) is inconsistent with itself or the data."""


class BadModel(FmctrError):
    """The model file is missing, not a model, truncated, or of an unknown version."""


class BadOptions(FmctrError):
    """Command-line options that conflict or are out of range."""
