"""User-facing errors.

Every problem caused by a user's input (a file, a field, a flag) raises :class:`BoltzdiffError` with a
one-line message that names the file/field and what was expected. The CLI prints it without a traceback
and exits with status 2.
"""


class BoltzdiffError(Exception):
    """An error in user input, reported as one line by the CLI (exit status ``exit_code``)."""

    exit_code = 2


class ConfigError(BoltzdiffError, ValueError):
    """A malformed system spec, run config or command-line value."""


class NonFiniteEnergyError(BoltzdiffError, FloatingPointError):
    """Every configuration of a batch had a NaN/inf (or capped) energy, so nothing can go on."""


class DegenerateRunError(BoltzdiffError):
    """A finished run whose estimates failed the sanity gates (:mod:`boltzdiff.analysis.sanity`); its outputs are
    kept and flagged, and the CLI exits with status 3 (not 2: the input was fine, the result is not)."""

    exit_code = 3
