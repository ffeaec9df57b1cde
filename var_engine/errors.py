"""Typed errors: every message is meant to be shown to a user as it is."""
from __future__ import annotations


class VarEngineError(Exception):
    """Base class of all var-engine errors."""


class ConfigError(VarEngineError, ValueError):
    """A configuration value is out of range or inconsistent."""


class InputError(VarEngineError, ValueError):
    """A call got bad input (class ids, sampling settings, images)."""


class CheckpointError(VarEngineError, ValueError):
    """A checkpoint is missing, malformed, hostile or does not fit the model."""
