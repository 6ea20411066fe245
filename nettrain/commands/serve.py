"""`nettrain serve`: a trained run answering clients over HTTP (nettrain.serving): predictions, batched across
concurrent requests, and feedback on them stored under the run for `nettrain update`."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from nettrain.commands.args import parse_args, run_command
from nettrain.errors import UserError, invalid
from nettrain.serving.network import is_loopback

log = logging.getLogger("nettrain")

USAGE = """
usage: nettrain serve [ckpt=]RUN [port=8000] [host=127.0.0.1] [token=SECRET]
                      [max_batch=64] [max_body=16MiB] [batch_wait_ms=5]
                      [remember=1000] [device=auto|cpu|cuda] [threads=auto]
                      [access_log=false] [model._target_=PATH]

Serve a trained model over HTTP, as JSON. RUN is a run dir (for its
checkpoints/best.pt), a .pt checkpoint or an exported .onnx file. Routes:
  POST /predict   {"inputs": [...]}: images as base64 strings, table rows as
                  objects of column -> value, texts as strings; images also as
                  multipart file uploads. Each input gets an id, its label and
                  the class probabilities (the value, for regression).
  POST /feedback  {"id": ID, "label": L} on a prediction of this server, or
                  {"input": ..., "label": L} for a new case; stored (fsynced)
                  under RUN/feedback/ before the answer, for nettrain update.
  GET /info       what the model takes and answers; GET /health; GET /docs.
Concurrent requests are batched on their way to the model.

  port=8000       0 picks a free port (the log says which)
  host=127.0.0.1  an address other than this machine's own needs token=
  token=SECRET    every request must then send 'Authorization: Bearer SECRET'
                  (at least 16 characters; or set NETTRAIN_SERVE_TOKEN)
  max_batch=64    inputs per model call, and the most one request may send
  max_body=16MiB  the largest request body (bytes, or with KB/MB/KiB/MiB)
  batch_wait_ms=5 how long a request waits for others to join its batch
  remember=1000   predictions kept in memory for feedback by id
  threads=auto    CPU threads per model call (auto: 1 for a small model)
  access_log=true one line per request on stderr
Ctrl-C or SIGTERM stops the server once the requests in flight are answered.

examples:
  nettrain serve outputs/2025-01-31/12-00-00
  curl -s localhost:8000/predict -d '{"inputs": ["when is the next flight"]}'
  curl -s localhost:8000/predict -F file=@photo.jpg -F file=@other.png
  NETTRAIN_SERVE_TOKEN=$(openssl rand -hex 16) nettrain serve RUN host=0.0.0.0
"""

DEFAULTS: dict[str, Any] = {"ckpt": None, "port": 8000, "host": "127.0.0.1", "token": None, "max_batch": 64,
                            "max_body": "16MiB", "batch_wait_ms": 5, "remember": 1000, "device": "auto", "threads": "auto",
                            "access_log": False}
TOKEN_ENV = "NETTRAIN_SERVE_TOKEN"
SERVE_EXTRA = ("fastapi", "uvicorn", "starlette", "multipart", "python_multipart")  # what pip install 'nettrain[serve]' brings
MIN_TOKEN = 16
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def byte_size(key: str, value: Any, low: int, high: int) -> int:
    """A size in bytes from `16777216`, `16MiB` or `10MB`, within [low, high]."""
    match = _SIZE.match(str(value)) if not isinstance(value, bool) else None
    unit = match.group(2).lower() if match else None
    if unit not in _UNITS:
        raise invalid(key, value, "give bytes, or a number with KB, MB, GB, KiB, MiB or GiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if not low <= size <= high:
        raise invalid(key, value, f"must be between {low} and {high} bytes")
    return size


def integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(key, value, f"must be an integer from {low} to {high}")
    return value


def _serve(argv: list[str]) -> int:
    args = parse_args(argv, DEFAULTS, required=("ckpt",), paths=("ckpt", "token", "host"), prefixes=("model.",),
                      positional="ckpt")
    port = integer("port", args["port"], 0, 65535)
    max_batch = integer("max_batch", args["max_batch"], 1, 4096)
    remember = integer("remember", args["remember"], 0, 10**7)
    threads = None if args["threads"] == "auto" else integer("threads", args["threads"], 1, 1024)
    max_body = byte_size("max_body", args["max_body"], 1024, 2**31)
    wait = args["batch_wait_ms"]
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 1000:
        raise invalid("batch_wait_ms", wait, "must be a number of milliseconds from 0 to 1000")
    if not isinstance(args["access_log"], bool):
        raise invalid("access_log", args["access_log"], "allowed: true, false")
    host = args["host"].strip()
    token = args["token"] if args["token"] is not None else os.environ.get(TOKEN_ENV) or None
    if token is not None and (len(token) < MIN_TOKEN or not token.isprintable() or " " in token):
        raise UserError(f"invalid token: give at least {MIN_TOKEN} printable characters without spaces "
                        f"(e.g. openssl rand -hex 16)")
    if token is None and not is_loopback(host):
        raise UserError(f"host={host} lets other machines connect: give token=SECRET (or set {TOKEN_ENV}), "
                        f"which every request must then send as 'Authorization: Bearer SECRET'")
    try:
        from nettrain.serving.server import Settings, serve  # torch, uvicorn: once the arguments are checked
    except ImportError as e:
        if e.name in SERVE_EXTRA:
            raise UserError(f"nettrain serve needs the {e.name} package: pip install 'nettrain[serve]'") from None
        raise
    settings = Settings(max_batch=max_batch, max_body=max_body, batch_wait_ms=float(wait), remember=remember, token=token)
    try:
        serve(args["ckpt"], settings, host=host, port=port, device=args["device"], threads=threads,
              access_log=args["access_log"], confirmed={"model": args.get("model")})
    except KeyboardInterrupt:  # Ctrl-C while the model loads, before the server handles it
        log.info("interrupted before the server started")
        return 130
    return 0


def main(argv: list[str]) -> int:
    return run_command(_serve, argv, USAGE)
