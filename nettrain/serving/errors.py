"""What a client did wrong (or what the server cannot do now), as the one line and HTTP status it is answered with."""

from __future__ import annotations

from nettrain.errors import UserError


class RequestError(UserError):
    """A request the server refuses: `status` is the HTTP code, the message the one line of `{"error": ...}`."""

    def __init__(self, message: str, status: int = 422, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def describe_value(value: object) -> str:
    """What a JSON value is, in the words of JSON ('an object', 'a number'), for errors about the wrong kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__
