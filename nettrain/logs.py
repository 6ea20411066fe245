"""One rich console on stderr for logs and progress bars, so stdout stays clean for data."""

import logging
import sys
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True, soft_wrap=True)  # paths stay whole, greppable


class _StderrHandler(logging.StreamHandler):
    """Plain lines to whatever sys.stderr is at the time (never wrapped: logs and CI stay greppable)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def console_handler() -> logging.Handler:
    """Log handler for Hydra's job_logging config: rich lines on a terminal (kept above the progress
    bar), plain unwrapped lines when stderr is a file or pipe."""
    if console.is_terminal:
        return RichHandler(console=console, show_time=False, show_level=False, show_path=False,
                           markup=False, rich_tracebacks=False)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def setup_plain_logging() -> None:
    """Logging for the commands that are not Hydra apps (eval, predict, export, ...)."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(console_handler())
        root.setLevel(logging.INFO)


def epoch_progress(enabled: bool = True) -> Any:
    """A progress bar per epoch: batches, running loss, samples/s, ETA (only on a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} samples/s"),
                    TimeRemainingColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))
