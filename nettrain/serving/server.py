"""The server: a socket bound before the model loads (a port in use is one line at once), uvicorn serving the app
in a thread of its own, and the main thread waiting for Ctrl-C or SIGTERM to stop it cleanly: requests in
flight are answered, the feedback file is closed, the exit code is 0."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import uvicorn

from nettrain.errors import UserError, first_line
from nettrain.inference.generate import threads_for
from nettrain.inference.load import load_model
from nettrain.runtime import choose_threads
from nettrain.serving.app import create_app
from nettrain.serving.network import listen, url_of
from nettrain.serving.service import Service, Settings

if TYPE_CHECKING:
    import socket

log = logging.getLogger("nettrain")

GRACEFUL_STOP_S = 10   # requests in flight get this long to finish after Ctrl-C / SIGTERM
START_TIMEOUT_S = 60   # uvicorn's own start-up (the model is loaded before)


@dataclass
class Running:
    """A server serving in a thread; `stop()` ends it as Ctrl-C would."""

    server: uvicorn.Server
    thread: threading.Thread
    url: str
    failure: list[BaseException]

    def stop(self, timeout: float = GRACEFUL_STOP_S + 5) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start(app: Any, sock: socket.socket, access_log: bool = False) -> Running:
    """Serve `app` on the bound `sock` in a thread; returns once it accepts connections."""
    config = uvicorn.Config(app, log_level="info" if access_log else "warning", access_log=access_log,
                            timeout_graceful_shutdown=GRACEFUL_STOP_S, lifespan="on")
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # noqa: B036 -- reported by the thread that waits (uvicorn exits by SystemExit)
            failure.append(e)

    thread = threading.Thread(target=run, name="nettrain-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        thread.join(GRACEFUL_STOP_S)
        sock.close()
        why = f": {first_line(failure[0])}" if failure and not isinstance(failure[0], SystemExit) else ""
        raise UserError(f"the server did not start{why} (see the lines above)")
    return Running(server, thread, url_of(sock), failure)


def wait_for_signal(running: Running) -> str:
    """Serve until Ctrl-C or SIGTERM (a second Ctrl-C stops at once); the name of the signal that stopped it."""
    received: list[str] = []

    def stop(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        if running.server.should_exit:
            running.server.force_exit = True  # a second signal: do not wait for requests in flight
        running.server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running.thread.is_alive():
            running.thread.join(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else "the server's own exit"


def serve(ckpt: str, settings: Settings, *, host: str, port: int, device: str = "auto", threads: int | None = None,
          access_log: bool = False, confirmed: dict[str, Any] | None = None) -> None:
    """`nettrain serve`: bind, load the model once, serve until Ctrl-C or SIGTERM. `threads`: the CPU threads of
    the model's calls (None: one for a small model, as training chooses, else every core)."""
    sock = listen(host, port)  # before the model loads: a port in use is said at once
    try:
        service = Service(load_model(ckpt, device, confirmed), settings)
    except BaseException:
        sock.close()
        raise
    # A small model's call is too short to split across threads: on a busy 2-core machine the digits MLP's batch
    # of 64 took 19-21 ms on two threads and 4-5 ms on one (the threads wait for each other).
    threads, why = (threads, "threads=") if threads else threads_for(service.lm) if service.lm is not None else \
        choose_threads(service.loaded.model, settings.max_batch)
    torch.set_num_threads(threads)
    running = start(create_app(service), sock, access_log)
    spec = service.loaded.spec
    what = {"regression": "regression", "lm": "a language model"}.get(spec.task, f"{len(spec.class_names)} classes")
    on = service.loaded.device.type if service.loaded.device.type != "cpu" else f"cpu, {threads} thread(s): {why}"
    log.info("serving %s (%s inputs, %s; %s) on %s", service.loaded.path, service.inputs.kind, what, on, running.url)
    log.info("  %s  GET /info  GET /health  (docs: %s/docs); max_batch=%d, batch_wait_ms=%g, "
             "max_body=%d%s; Ctrl-C stops", "POST /generate" if service.lm is not None else "POST /predict  POST /feedback",
             running.url, settings.max_batch, settings.batch_wait_ms, settings.max_body,
             ", token required" if settings.token else "")
    stopped_by = wait_for_signal(running)
    if running.failure:
        raise UserError(f"the server stopped: {first_line(running.failure[0])}")
    log.info("stopped (%s): %d prediction(s), %d feedback record(s)%s", stopped_by, service.counts["predicted"],
             service.counts["feedback"], f" in {service.store.path}" if service.counts["feedback"] else "")
