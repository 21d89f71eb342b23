"""One small exception hierarchy. Every message says what failed, the value received, and the fix.

The CLI turns any :class:`EdgeshipError` into one line on stderr and exit status 2.
"""

from __future__ import annotations

__all__ = [
    "EdgeshipError",
    "InvalidModelError",
    "DataMismatchError",
    "UnknownRecipeError",
    "PassNotApplicableError",
    "PassFailedError",
    "ConfigError",
    "BundleError",
    "KeyFileError",
    "RollbackStateError",
    "ProtocolError",
    "RepoError",
    "FleetError",
]


class EdgeshipError(Exception):
    """Base class for errors a user can act on."""


class InvalidModelError(EdgeshipError):
    """The model file is missing, unreadable, unsafe, or not a model."""


class DataMismatchError(EdgeshipError):
    """Data does not match the model's inputs (names, dtypes, shapes) or is malformed."""


class UnknownRecipeError(EdgeshipError):
    """A recipe or pass name that is not registered."""


class PassNotApplicableError(EdgeshipError):
    """A pass cannot apply to this model (e.g. int4 MatMul on a model with no MatMul)."""


class PassFailedError(EdgeshipError):
    """A pass started but failed; recorded per candidate, other candidates still run."""


class ConfigError(EdgeshipError):
    """A configuration value is out of range or of the wrong type."""


# -- the device side ---------------------------------------------------------------------


class BundleError(EdgeshipError):
    """The bundle is not authentic, not intact, not decryptable, or not allowed (rollback)."""


class KeyFileError(EdgeshipError):
    """A key file is missing, unreadable, or not a key of the expected kind."""


class RollbackStateError(EdgeshipError):
    """The anti-rollback state file cannot be trusted."""


class ProtocolError(EdgeshipError):
    """A request the server refuses; ``status`` is the HTTP status to answer with (4xx for the client's fault)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RepoError(EdgeshipError):
    """The update repository is missing, damaged, or the request does not fit it."""


class FleetError(EdgeshipError):
    """The fleet service cannot be reached or refused a request."""
