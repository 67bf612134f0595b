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


class Interrupted(FmctrError):
    """Training stopped on request (SIGINT/SIGTERM) after writing a checkpoint."""

    def __init__(self, epoch: int, rows_done: int, rows: int):
        self.epoch, self.rows_done, self.rows = epoch, rows_done, rows
        super().__init__(f"interrupted in epoch {epoch} after {rows_done:,} of {rows:,} rows")


class Diverged(FmctrError):
    """Training produced a loss or weights that are not finite (NaN or infinity)."""
