"""One base class for every mistake a user or the environment can make, so each command catches it once.

A command turns an `ActiveposeError` into one line on stderr and exit code 2; anything else is a bug and
gets a traceback (with the path of the log). Library modules raise the most specific subclass; the classes
that existed before this module (`CocoError`, `StoreError`, ...) inherit from `ActiveposeError` too.
"""

from __future__ import annotations


class ActiveposeError(Exception):
    """A user or environment mistake with a message that says what is wrong and where."""


class ConfigError(ActiveposeError, ValueError):
    """An option or configuration value is invalid (checked before any work starts)."""


class EnvironmentProblem(ActiveposeError, OSError):
    """The machine cannot do what was asked: no GPU, disk full, read-only folder, missing weights."""


class StateError(ActiveposeError, RuntimeError):
    """The project is not in a state that allows the request (no open round, no model yet, ...)."""


class SyntheticError(ActiveposeError, ValueError):
    """The synthetic generator cannot produce data for this skeleton or configuration."""
