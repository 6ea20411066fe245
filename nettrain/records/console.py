"""One rich console on stderr for logs and progress bars, so stdout stays clean for data."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

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


class RunLogFile(logging.FileHandler):
    """train.log, opened at its first line (a refused command leaves none). A disk that refuses the file
    (read-only, full) ends the log file, never the run: said once on the console, and the run goes on."""

    def __init__(self, filename: str) -> None:
        super().__init__(filename, delay=True)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failed:
            return
        try:
            if self.stream is None:
                self.stream = self._open()
        except OSError as e:
            self._give_up(e)
            return
        super().emit(record)  # a failed write comes back through handleError

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        self._give_up(error if isinstance(error, OSError) else None)

    def _give_up(self, error: OSError | None) -> None:
        self.failed = True
        reason = (error.strerror or str(error)) if error is not None else "a write failed"
        console.print(f"nettrain: cannot write {self.baseFilename} ({reason}); the log goes on on the console only",
                      markup=False, highlight=False)


def setup_plain_logging() -> None:
    """Logging for the commands that are not Hydra apps (eval, predict, export, ...): the console at
    INFO, whatever an earlier command in this process left (a run's train.log, a worker's ERROR level)."""
    root = logging.getLogger()
    root.handlers[:] = [console_handler()]
    root.setLevel(logging.INFO)


# How often a bar's numbers are read and redrawn: a few times a second, whatever the step rate.
REFRESH_SECONDS = 0.25


def make_progress(enabled: bool = True, out: Console | None = None) -> Any:
    """A rich Progress on stderr: description, bar, done/total, [loss], samples/s, ETA, in 80
    columns; off when stderr is not a terminal (logs and CI stay clean)."""
    return Progress(TextColumn("{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
                    TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                    TextColumn("eta"), TimeRemainingColumn(), console=out or console,
                    transient=True, refresh_per_second=1 / REFRESH_SECONDS,
                    disable=not (enabled and (out or console).is_terminal))


class StepBar:
    """One task of a progress bar advanced every step at the cost of a counter and a clock read.

    Its numbers (done, running mean loss, samples/s) are pushed to the bar only when a refresh is
    due by wall-clock time, so the bar moves a few times a second however fast or slow the steps
    are, and `loss` (a callable that may read an on-device running total, i.e. wait for the GPU)
    is called only then, never once per step.
    """

    def __init__(self, progress: Any, description: str, total: int | None, *, completed: int = 0,
                 samples_per_step: int = 1, loss: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.monotonic, every: float = REFRESH_SECONDS) -> None:
        self.progress, self.loss, self.clock, self.every = progress, loss, clock, every
        self.samples_per_step = samples_per_step
        self.done, self.seen = completed, 0
        self.started = clock()
        self.due = self.started + every
        self.enabled = not progress.disable
        self.task = progress.add_task(description, total=total, completed=completed, loss="", rate="")

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.seen += n
        if self.enabled and self.clock() >= self.due:
            self.refresh()

    def refresh(self) -> None:
        now = self.clock()
        self.due = now + self.every
        rate = self.seen * self.samples_per_step / max(now - self.started, 1e-9)
        loss = f"loss {self.loss():.4f}" if self.loss is not None else ""
        self.progress.update(self.task, completed=self.done, loss=loss, rate=f"{rate:,.0f}/s")

    def close(self) -> None:
        self.progress.remove_task(self.task)


@contextmanager
def step_bar(description: str, total: int | None, *, samples_per_step: int = 1,
             loss: Callable[[], float] | None = None, enabled: bool = True) -> Iterator[StepBar]:
    """A progress bar of its own for one loop (lr-find, eval, predict): `bar.advance()` per step."""
    with make_progress(enabled=enabled) as progress:
        bar = StepBar(progress, description, total, samples_per_step=samples_per_step, loss=loss)
        try:
            yield bar
        finally:
            bar.close()


class EpochProgress:
    """The training loop's bar: one StepBar per epoch on one live display."""

    def __init__(self, enabled: bool) -> None:
        self.progress = make_progress(enabled=enabled)

    def __enter__(self) -> EpochProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def start(self, description: str, total: int, *, completed: int, samples_per_step: int,
              loss: Callable[[], float]) -> StepBar:
        return StepBar(self.progress, description, total, completed=completed, samples_per_step=samples_per_step,
                       loss=loss)


def epoch_progress(enabled: bool = True) -> EpochProgress:
    """Progress for `fit`: per epoch, batches, running mean loss, samples/s, ETA (on a terminal only)."""
    return EpochProgress(enabled)


def labelled(label: str, value: str, *, log: bool = False, indent: int = 0, out: Console | None = None) -> None:
    """`label  value` on one line, or, when that would not fit the terminal, the value (a long path)
    on a line of its own under the label, so it is never broken mid-word. With `log`, through the
    `nettrain` logger (so it is also in train.log)."""
    out = out or console
    pad = " " * indent
    line = f"{pad}{label:<8} {value}"
    lines = [line] if not out.is_terminal or len(line) <= out.width else [f"{pad}{label}", f"{pad}  {value}"]
    for text in lines:
        if log:
            logging.getLogger("nettrain").info(text)
        else:
            out.print(text, markup=False, highlight=False, soft_wrap=True)


def epoch_line(r: dict[str, Any], max_epochs: int, improved: bool) -> str:
    """One epoch in at most 80 columns: `epoch  3/20  loss 0.4123 val 0.3778  acc 88.0% val 90.6%  lr 1.0e-03  0.1s *`
    (binary classification decided at a threshold other than argmax's 0.5: `val f1 0.812 @0.22`, the rare
    class's F1 at that threshold, for the accuracies)."""
    width = len(str(max_epochs))
    parts = [f"epoch {r['epoch']:>{width}}/{max_epochs}"]
    if "val_rmse" in r:  # regression: the loss is the MSE, so RMSE and MAE say it in the target's units
        parts += [f"rmse {r['train_rmse']:.4g} val {r['val_rmse']:.4g}", f"mae {r['train_mae']:.4g} val {r['val_mae']:.4g}"]
    else:
        parts.append(f"loss {r['train_loss']:.4g} val {r['val_loss']:.4g}")
    if "val_perplexity" in r:  # a language model: its loss per character in bits, and its perplexity
        parts += [f"bpc {r['val_bpc']:.3f}"] if "val_bpc" in r else []
        parts.append(f"ppl {r['val_perplexity']:.2f}")
    elif r.get("val_threshold", 0.5) != 0.5:  # a rare class: its F1 says more than an accuracy the common class makes high
        parts.append(f"val f1 {r['val_f1']:.3f} @{r['val_threshold']:.2f}")
    elif "val_accuracy" in r:
        parts.append(f"acc {r['train_accuracy']:.1%} val {r['val_accuracy']:.1%}")
    parts += [f"lr {r['lr']:.1e}", f"{r['seconds']:.1f}s" if r["seconds"] < 100 else f"{r['seconds']:.0f}s"]
    return "  ".join(parts) + (" *" if improved else "")


def final_summary(result: dict[str, Any], record: dict[str, Any], run_dir: Any, out: Console | None = None) -> None:
    """The end of a run: status, best epoch and metrics, then the paths and commands, each path
    on its own line when it would not fit the terminal."""
    out = out or console
    best = record.get("best", {})
    shown = ("val_loss", "val_accuracy", "val_f1", "val_rmse", "val_mae", "val_bpc", "val_perplexity")
    metrics = "  ".join(f"{k[4:]} {v:.4f}" for k, v in best.items() if k in shown)
    color = {"completed": "green", "stopped_early": "green", "interrupted": "yellow"}.get(result["status"], "red")
    seconds = record.get("total_seconds")
    out.print(f"[bold {color}]{result['status']}[/] after {record['epochs']} epoch(s)"
              + (f" in {seconds:.1f}s" if seconds is not None else ""))
    if result.get("best_epoch"):
        labelled("best epoch", f"{result['best_epoch']}: val {metrics}", indent=2, out=out)
        labelled("model", str(run_dir / "checkpoints" / "best.pt"), indent=2, out=out)
    labelled("run dir", str(run_dir), indent=2, out=out)
    labelled("curves", f"tensorboard --logdir {run_dir}", indent=2, out=out)
    if result["status"] == "interrupted":
        labelled("resume", f"nettrain train resume={run_dir}", indent=2, out=out)


def _count(n: int) -> str:
    return f"{n:,}" if n < 10_000_000 else f"{n / 1e6:.1f}M"


def startup_lines(facts: dict[str, Any], run_dir: Path) -> list[str]:
    """A handful of lines, each at most 80 columns (the run dir on its own line)."""
    d, m, o = facts["data"], facts["model"], facts["optimizer"]
    if "tokens" in d:  # a language model: its text in tokens, and what a token is
        samples = ", ".join(f"{_count(n)} {split}" for split, n in d["tokens"].items()) + " tokens"
        classes = f"vocabulary {d['vocabulary']}"
    else:
        samples = ", ".join(f"{_count(n)} {split}" for split, n in d["samples"].items())
        classes = f"{d['classes']} classes" if d["classes"] else d["task"]
    shape = "x".join(map(str, d["input_shape"]))
    processes = f" x {facts['processes']} processes" if facts["processes"] > 1 else ""
    return [
        f"run dir  {run_dir}",
        f"device   {facts['device']} ({facts['device_name']}){processes}",
        f"         precision {facts['precision']}, {facts['threads']} threads",
        f"data     {d['name']}: {samples}; {classes}; input {shape}",
        f"model    {m['name']}: {_count(m['parameters'])} parameters ({_count(m['trainable'])} trainable), "
        f"{m['outputs']} outputs",
        *([f"         remembers {_count(m['remembered_rows'])} training rows (model.memory)"]
          if m.get("remembered_rows") is not None else []),
        f"train    {o['name']} lr {o['lr']:g}, schedule {facts['scheduler']}, batch {facts['batch_size']}",
        f"         {facts['epochs']} epochs x {facts['steps_per_epoch']} steps = {facts['steps']:,} steps",
    ]


def layers_table(model: dict[str, Any]) -> Any:
    """The model summary's layers as a rich table (layer, type, output shape, parameters)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, title_justify="left",
                  title=f"layers of {model['name']} (input {'x'.join(map(str, model['input_shape']))})")
    table.add_column("layer", overflow="fold")
    table.add_column("type", overflow="fold")
    table.add_column("output", justify="right")
    table.add_column("params", justify="right")
    for layer in model["layers"]:
        shape = "x".join(map(str, layer["output_shape"])) if layer["output_shape"] is not None else "?"
        table.add_row(layer["name"], layer["type"], shape, _count(layer["parameters"]) if layer["parameters"] else "")
    table.add_row("total", "", "", _count(model["parameters"]), style="bold")
    return table
