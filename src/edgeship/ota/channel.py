"""A channel index: what the publisher writes and the agent reads, in one place.

The TUF target ``<model>/<channel>.json`` holds ``{"model", "channel", "releases": [...]}``,
each release ``{"version": int >= 1, "target": "<model>/<model>-<version>.edgeship",
"rollout": 0-100, "published": ISO time}``. TUF vouches that the file is the publisher's; this
module checks that it is well formed, so that a buggy publisher cannot stop the agents that
read it.
"""

from __future__ import annotations

import math
from typing import Any

from edgeship.core.errors import ConfigError
from edgeship.core.names import check_name

__all__ = ["CHANNELS", "MAX_RELEASES", "channel_target", "bundle_target", "check_index"]

CHANNELS = ("stable", "canary")
MAX_RELEASES = 10000


def channel_target(model: str, channel: str, error: type[Exception] = ConfigError) -> str:
    check_name(model, "model name", error)
    if channel not in CHANNELS:
        raise ConfigError(f"--channel must be one of {list(CHANNELS)}, got {channel!r}.")
    return f"{model}/{channel}.json"


def bundle_target(model: str, version: int) -> str:
    return f"{model}/{model}-{version}.edgeship"


def check_index(index: Any, model: str) -> list[dict[str, Any]]:
    """The releases of a parsed channel index, each checked; ValueError naming the first fault."""
    releases = index.get("releases") if isinstance(index, dict) else None
    if not isinstance(releases, list) or len(releases) > MAX_RELEASES:
        raise ValueError("the channel index has no list of releases")
    for r in releases:
        version = r.get("version") if isinstance(r, dict) else None
        if type(version) is not int or not 1 <= version < 2**53:
            raise ValueError(f"a release's version is {str(version)[:40]!r}, not a whole number >= 1")
        if r.get("target") != bundle_target(model, version):
            raise ValueError(f"release v{version} names the target {str(r.get('target'))[:80]!r}, not "
                             f"{bundle_target(model, version)!r}")
        rollout = r.get("rollout")
        if not isinstance(rollout, (int, float)) or isinstance(rollout, bool) or not (
                math.isfinite(rollout) and 0 <= rollout <= 100):
            raise ValueError(f"release v{version} has rollout {str(rollout)[:40]!r}, not a percentage")
    return releases
