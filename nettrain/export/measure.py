"""What an exported file costs and gains, measured: its size, its accuracy (RMSE for regression) on the run's
val split next to the PyTorch model's on the same samples, how often its labels agree with PyTorch's, and its
CPU speed: latency at batch 1 (median and 95th percentile of single calls) and throughput at batch 32, on a
stated number of threads. The accuracy is `nettrain eval`'s own (`evaluation.checkpoint.evaluate_loaded`),
so the figures in the .json are what eval reports for the file.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nettrain.data.base import Data
from nettrain.evaluation.checkpoint import Evaluation, evaluate_loaded
from nettrain.inference.decision import Decision
from nettrain.inference.load import Loaded

LATENCY_SECONDS = 1.0      # timing budget per file and batch size (at least MIN_RUNS calls either way)
MIN_RUNS, WARMUP = 20, 5   # calls timed at least; calls first run untimed (allocations, lazy kernel choice)
THROUGHPUT_BATCH = 32


def measure(loaded: Loaded, files: dict[str, tuple[Path, nn.Module]], data: Data | None, unavailable: str | None,
            threads: int, fallback: Tensor) -> dict[str, Any]:
    """The figures of each of `files` ({name: (file, its runner)}): size, speed, and with `data` the val accuracy
    (or RMSE) next to the PyTorch model's, its drop and the labels' agreement. Without data (`unavailable`: why),
    the speed is timed on `fallback` inputs."""
    metric = metric_of(loaded.spec.task)
    measured: dict[str, Any] = {"metric": metric, "split": "val", "threads": threads, "files": {}}
    reference = score(loaded, loaded.model, data) if data is not None else None
    if reference is None:
        measured["not_measured"] = f"{metric} not measured: {unavailable}"
    else:
        measured |= {"samples": reference.metrics["samples"], "pytorch": {metric: reference.metrics[metric]}}
    timed = speeds({name: model for name, (_, model) in files.items()}, speed_inputs(data, fallback), threads)
    for name, (path, model) in files.items():
        figures: dict[str, Any] = {"size_bytes": file_size(path)}
        if reference is not None:
            ours = score(loaded, model, data)
            figures |= {metric: ours.metrics[metric], "drop": drop(loaded.spec.task, reference.metrics[metric],
                                                                    ours.metrics[metric]),
                        "agreement": agreement(loaded, ours, reference)}
        measured["files"][name] = figures | {"speed": timed[name]}
    return measured


def metric_of(task: str) -> str:
    return "rmse" if task == "regression" else "accuracy"


def score(loaded: Loaded, model: nn.Module, data: Data) -> Evaluation:
    """`model` (the PyTorch one or an exported file's runner) evaluated on the val split as `nettrain eval` would."""
    return evaluate_loaded(replace(loaded, model=model), data, "val")


def drop(task: str, reference: float, value: float) -> float:
    """How much worse `value` is than PyTorch's `reference`: points of accuracy, or for regression percent
    of PyTorch's RMSE (its rise)."""
    if task == "regression":
        return (value - reference) / max(reference, 1e-12) * 100
    return (reference - value) * 100


def agreement(loaded: Loaded, ours: Evaluation, pytorch: Evaluation) -> float | None:
    """The share of samples whose label from `ours` is PyTorch's, decided as eval decides."""
    if loaded.spec.task == "regression" or ours.outputs is None or pytorch.outputs is None:
        return None  # regression has no labels; a language model's outputs per token are not collected
    if pytorch.targets.dim() > 1:  # multi-hot: every label the same
        same = ((ours.outputs > 0) == (pytorch.outputs > 0)).all(-1)
    else:
        decision = Decision.from_checkpoint(loaded.decision, loaded.spec)
        if decision is None:
            same = ours.outputs.argmax(-1) == pytorch.outputs.argmax(-1)
        else:
            same = decision.predict(ours.outputs, decision.fixed) == decision.predict(pytorch.outputs, decision.fixed)
    return float(same.double().mean())


def speed_inputs(data: Data | None, fallback: Tensor) -> Tensor:
    """THROUGHPUT_BATCH real val inputs (repeated when the split is smaller), or `fallback` without data."""
    if data is None:
        return fallback
    first = next(iter(data.val.batches(0)))[0].cpu()
    repeats = math.ceil(THROUGHPUT_BATCH / len(first))
    return torch.cat([first] * repeats)[:THROUGHPUT_BATCH]


def speeds(models: dict[str, nn.Module], batch: Tensor, threads: int) -> dict[str, dict[str, Any]]:
    """Each model's latency at batch 1 (ms, p50 and p95 of single calls) and throughput at `len(batch)` (samples/s)."""
    with _torch_threads(threads):
        single, whole = _timings(models, batch[:1]), _timings(models, batch)
    return {name: {"latency_ms": {"p50": _percentile(single[name], 50) * 1e3, "p95": _percentile(single[name], 95) * 1e3},
                   "throughput_per_s": len(batch) / _percentile(whole[name], 50), "throughput_batch": len(batch),
                   "threads": threads} for name in models}


def file_size(path: Path) -> int:
    return path.stat().st_size


def _timings(models: dict[str, nn.Module], x: Tensor) -> dict[str, list[float]]:
    """Seconds per call of each model on `x`, the models called in turn, so that a load coming and going on a
    shared machine weighs on each alike: at least MIN_RUNS rounds, and LATENCY_SECONDS per model."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(WARMUP):
            for model in models.values():
                model(x)
        end = time.perf_counter() + LATENCY_SECONDS * len(models)
        while len(times[next(iter(models))]) < MIN_RUNS or time.perf_counter() < end:
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return times


def _percentile(values: list[float], q: float) -> float:
    return float(torch.tensor(values, dtype=torch.float64).quantile(q / 100))


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """PyTorch (a TorchScript file) on `threads` threads while timed, as onnxruntime's sessions are made."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def table(measured: dict[str, Any]) -> list[str]:
    """The figures as lines of a table, for the command to print."""
    metric = measured["metric"]
    lines = [f"{'':12} {'size':>10} {metric:>9} {'drop':>7} {'agree':>7} {'p50 ms':>8} {'p95 ms':>8} "
             f"{'batch ' + str(THROUGHPUT_BATCH) + '/s':>11}"]
    reference = measured.get("pytorch", {}).get(metric)
    if reference is not None:
        lines.append(f"{'pytorch':12} {'':>10} {reference:>9.4f}")
    for name, f in measured["files"].items():
        value = f.get(metric)
        shown = [f"{value:>9.4f}" if value is not None else f"{'-':>9}",
                 f"{f['drop']:>+7.2f}" if f.get("drop") is not None else f"{'-':>7}",
                 f"{f['agreement']:>7.1%}" if f.get("agreement") is not None else f"{'-':>7}"]
        s = f["speed"]
        lines.append(f"{name:12} {_size(f['size_bytes']):>10} {' '.join(shown)} {s['latency_ms']['p50']:>8.3f} "
                     f"{s['latency_ms']['p95']:>8.3f} {s['throughput_per_s']:>11.0f}")
    unit = "percent of PyTorch's RMSE" if metric == "rmse" else "points"
    lines.append(f"drop in {unit}; CPU, {measured['threads']} thread(s); {metric} on the val split"
                 + (f" ({measured['samples']} samples)" if measured.get("samples") else f": {measured.get('not_measured')}"))
    return lines


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"
