"""Errors a user can fix. Each ends the command with one line and exit code 2, never a traceback."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A bad input: the message names the value and what is allowed."""

    exit_code = 2


def invalid(key: str, value: object, allowed: str) -> UserError:
    """The one-line error for a config value: names the key, the value and what is allowed."""
    return UserError(f"invalid {key}={value!r}: {allowed}")


def os_error_line(e: OSError) -> str:
    """A failed write or read (a read-only dir, a full disk, a file in the way) in one line."""
    where = f" {e.filename}" if e.filename else ""
    return f"cannot write or read{where}: {e.strerror or e}"


def one_of(key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """`value` when it is one of `allowed`, else the one-line error naming both."""
    if value not in allowed:
        raise invalid(key, value, "allowed: " + ", ".join(map(str, allowed)))
    return value


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's first non-empty line (its type's name when it has none), at most `limit` characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]
