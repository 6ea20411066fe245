"""What every request passes before a route sees it: the token (when the server has one) and the body's size.

Both are checked from the headers, before the body is read: a request without the token is answered 401, one
whose Content-Length is over `max_body` 413, at once. A body of unknown length (chunked) is read only up to
`max_body` and refused as soon as it passes it, so no request can make the server hold more than that.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Guard:
    """ASGI middleware: the bearer token and the body limit."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.token is not None and not self._authorized(headers.get("authorization", "")):
            await refuse(send, 401, "missing or wrong token: send the header 'Authorization: Bearer TOKEN'",
                         {"www-authenticate": "Bearer"})
            return
        length = headers.get("content-length")
        if length is not None:
            if int(length) > self.max_body:  # the HTTP parser has checked it is a number
                await refuse(send, 413, f"the body is {int(length)} bytes, over this server's max_body={self.max_body}")
                return
            await self.app(scope, receive, send)  # the parser never delivers more than Content-Length
            return
        try:
            body = await self._bounded_body(receive)
        except _ClientGone:
            return  # nobody to answer
        if body is None:
            await refuse(send, 413, f"the body is over this server's max_body={self.max_body} bytes")
            return
        await self.app(scope, _replay(body, receive), send)

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token or b"")

    async def _bounded_body(self, receive: Receive) -> bytes | None:
        """A body without Content-Length, read whole if it stays within max_body (None: it does not)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            size += len(message.get("body", b""))
            if size > self.max_body:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


class _ClientGone(Exception):
    """The client disconnected before its body was whole."""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body already read, then whatever the connection says next (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def refuse(send: Send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    """Answer `{"error": message}` with `status`, closing the connection (an unread body may follow)."""
    content = json.dumps({"error": message}).encode()
    extra: list[Any] = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode()),
                            (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": content})
