"""User-facing errors.

Every problem caused by a user's input (a file, a field, a flag) raises :class:`BoltzdiffError` with a
one-line message that names the file/field and what was expected. The CLI prints it without a traceback
and exits with status 2.
"""


class BoltzdiffError(Exception):
    """An error in user input, reported as one line by the CLI."""


class ConfigError(BoltzdiffError, ValueError):
    """A malformed system spec, run config or command-line value."""


class NonFiniteEnergyError(BoltzdiffError, FloatingPointError):
    """Every configuration of a batch had a NaN/inf (or capped) energy, so nothing can go on."""
