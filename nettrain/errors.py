"""Errors a user can fix. Each ends the command with one line and exit code 2, never a traceback."""


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
