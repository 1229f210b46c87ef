"""The error a constructor raises for an argument that cannot work: :class:`ArgumentError`.

Constructors own their checks; ``hcl-train``'s config checks
(:func:`hcl_lightning.config.validate_config`) call them and name the Hydra key of the
argument (``hcl.tau=0: must be a finite number > 0``) from :attr:`ArgumentError.argument`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "ArgumentError",
    "MissingPathError",
    "check_choice",
    "check_flag",
    "check_number",
    "check_path",
]


class ArgumentError(ValueError):
    """A constructor argument outside what it allows.

    Args:
        argument: the keyword argument's name.
        value: its value.
        requirement: what is allowed, e.g. ``"must be a finite number > 0"``.
        message: the message, default ``"{argument} {requirement}, got {value!r}"``.

    Example:
        >>> raise ArgumentError("temperature", 0.0, "must be a finite number > 0")
        ArgumentError: temperature must be a finite number > 0, got 0.0
    """

    def __init__(
        self, argument: str, value: Any, requirement: str, message: str | None = None
    ) -> None:
        super().__init__(message or f"{argument} {requirement}, got {value!r}")
        self.argument = argument
        self.value = value
        self.requirement = requirement

    def renamed(self, argument: str) -> ArgumentError:
        """The same error for an argument passed on under another name, e.g.
        ``hcl_tau (temperature) must be a finite number > 0, got 0.0``."""
        message = f"{argument} ({self.argument}) {self.requirement}, got {self.value!r}"
        return ArgumentError(argument, self.value, self.requirement, message=message)


class MissingPathError(FileNotFoundError):
    """A path argument that names no file (or directory).

    Args:
        argument: the keyword argument's name.
        path: its value.
        directory: whether a directory was expected.
    """

    def __init__(self, argument: str, path: str | Path, directory: bool) -> None:
        super().__init__(f"{argument} not found: {path}")
        self.argument = argument
        self.path = path
        self.kind = "directory" if directory else "file"


def check_path(argument: str, path: str | Path | None, directory: bool = False) -> Path | None:
    """``path`` (``~`` expanded) as a Path, or None for None.

    Raises:
        MissingPathError: (a ``FileNotFoundError``) if it names no file (directory).
    """
    if path is None:
        return None
    resolved = Path(path).expanduser()
    if not (resolved.is_dir() if directory else resolved.is_file()):
        raise MissingPathError(argument, path, directory)
    return resolved


def check_number(
    argument: str,
    value: Any,
    allowed: str,
    ok: Callable[[float], bool],
    integer: bool = False,
    nullable: bool = False,
) -> None:
    """Raises :class:`ArgumentError` unless ``value`` is a finite number with ``ok(value)``.

    Args:
        argument: the argument's name.
        value: its value (``bool`` is not a number).
        allowed: the allowed range in words, e.g. ``">= 0"``.
        ok: the range as a predicate.
        integer: require an ``int``.
        nullable: also allow ``None``.
    """
    if nullable and value is None:
        return
    kind = int if integer else (int, float)
    if (
        isinstance(value, kind)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and ok(value)
    ):
        return
    number = "an integer" if integer else "a finite number"
    raise ArgumentError(argument, value, f"must be {number} {allowed}" + (" or None" * nullable))


def check_choice(argument: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raises :class:`ArgumentError` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ArgumentError(argument, value, f"must be one of {allowed}")


def check_flag(argument: str, value: Any) -> None:
    """Raises :class:`ArgumentError` unless ``value`` is ``True`` or ``False`` (not 1, 0)."""
    if not isinstance(value, bool):
        raise ArgumentError(argument, value, "must be True or False")
