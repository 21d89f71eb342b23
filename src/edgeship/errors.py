"""The public home of edgeship's exceptions; they are defined in :mod:`edgeship.core.errors`."""

from edgeship.core.errors import *  # noqa: F403
from edgeship.core.errors import __all__  # noqa: F401
