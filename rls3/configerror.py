"""`ConfigError` and the one-line check that raises it: the lowest layer of the configuration, so
the schema (`rls3.config`), the backend specs (`rls3.backends`) and the checks made before a run
(`rls3.preflight`) report bad values the same way."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it and what is allowed."""


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """ConfigError "invalid key=value: must be allowed" unless `ok`."""
    if not ok:
        raise ConfigError(f"invalid {key}={value!r}: must be {allowed}")
