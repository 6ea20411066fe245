"""One command that proves nettrain's GPU path on whatever CUDA GPU this machine has (a few minutes on an H100).

    python scripts/gpu_check.py --cifar-npz gpu_data/cifar10_train.npz --text gpu_data/tinyshakespeare.txt --out OUT
    python scripts/gpu_check.py --cifar DIR --out OUT     # an image folder: DIR/{train,val}/<class> [DIR/test/<class>]
    python scripts/gpu_check.py --skip tests,bench        # parts: tests, bench, cifar10, cifar10_fast, shakespeare, default
    python scripts/gpu_check.py --wheels .whl ...         # first install the wheels the machine lacks (see below)

Parts, each timed, each a row of the table (and of OUT/gpu_check.json; OUT/gpu_check.md is the table):
  tests         `pytest -m cuda`: round trips on CUDA (train, resume, eval exactness, predict, export,
                precisions, channels-last, compile, CPU use of a GPU checkpoint, GPU augmentation)
  bench         scripts/bench.py's cases at real size: nettrain's samples/s against a hand-written loop's
  cifar10       `+experiment=cifar10` (ResNet-18) on the image folder, every epoch: epochs, seconds of training,
                val accuracy, and test accuracy when the folder has test/ (`nettrain eval split=test`)
  cifar10_fast  `+experiment=cifar10_fast` (ResNet-9), seeds 0-4: the same, and the mean over the seeds
  shakespeare   `+experiment=shakespeare_char` (a 10.7M-parameter character GPT, 5,000 steps) on --text (tiny
                shakespeare): its validation loss every 250 steps with the seconds so far, and when it first
                reached 1.47 nats/char (ok: within 180 s, as published char-level runs do on an A100)
  default       the default `nettrain train` (digits MLP): wall clock on the GPU and with trainer.device=cpu
Without --cifar or --cifar-npz the two recipes train on generated files of CIFAR-10's format, and without --text
the language model on a generated text (the timing is real, the accuracy and the loss are not). Exit code 1
when any part failed.

On a lent machine (docs/performance.md, "On a GPU"): its image has torch but not hydra-core, omegaconf or
antlr4; carry their wheels in .whl/ (`--wheels .whl` installs them into a temp dir and restarts with it on the
path) and CIFAR-10's npz in gpu_data/ (both git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PARTS = ("tests", "bench", "cifar10", "cifar10_fast", "shakespeare", "default")
LM_TARGET, LM_SECONDS = 1.47, 180.0  # nats/char within seconds of training: char-level GPT results on an A100
FAST_SEEDS = (0, 1, 2, 3, 4)
LOG: Path | None = None  # --log DIR: each command's whole output, DIR/<part>.log


def run(part: str, command: list[str], cwd: Path, timeout: float) -> tuple[int, str, float]:
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, out = 124, f"timed out after {timeout:.0f} s: {e}"
    if LOG is not None:
        with (LOG / f"{part}.log").open("a") as f:
            f.write(f"$ {' '.join(command)}\n{out}\n")
    return code, out, time.perf_counter() - start


def tests(work: Path) -> dict[str, Any]:
    code, out, seconds = run("tests", [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "--tb=short", "-p", "no:cacheprovider",
                                       str(REPO / "tests")], REPO, 300)
    summary = next((line for line in reversed(out.splitlines()) if " passed" in line or " failed" in line), out[-300:])
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"part": "tests", "ok": code == 0, "seconds": round(seconds, 1), "result": "\n".join([summary.strip("= "), *failed])}


def bench(work: Path) -> dict[str, Any]:
    code, out, seconds = run("bench", [sys.executable, str(REPO / "scripts" / "bench.py"), "--json", "--no-ddp", "--no-startup",
                                       "--rounds", "3"], REPO, 420)
    try:
        rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    except ValueError:
        return {"part": "bench", "ok": False, "seconds": round(seconds, 1), "result": out[-500:]}
    worst = min(r["ratio"] for r in rows)
    return {"part": "bench", "ok": code == 0 and worst >= 0.95, "seconds": round(seconds, 1), "rows": rows,
            "result": "; ".join(f"{r['case']} {r['nettrain']:,}/s = {r['ratio']:.3f}x raw" for r in rows)}


def unpack_npz(npz: Path, out: Path, val_per_class: int = 500) -> Path:
    """The npz of CIFAR-10's 50,000 training images (JPEG bytes: jpeg, offsets, labels, classes) as an image folder:
    out/train/<class> (45,000) and out/val/<class> (the last 500 of each class in the file's order)."""
    import numpy as np

    z = np.load(npz)
    jpeg, offsets, labels, classes = z["jpeg"], z["offsets"], z["labels"], [str(c) for c in z["classes"]]
    for k, name in enumerate(classes):
        idx = np.flatnonzero(labels == k)
        for j, i in enumerate(idx):
            folder = out / ("val" if j >= len(idx) - val_per_class else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{j:05d}.jpg").write_bytes(jpeg[offsets[i]:offsets[i + 1]].tobytes())
    return out


def generated_cifar(work: Path) -> list[str]:
    """Overrides that train on generated files of CIFAR-10's format (50,000 images; no checksum can match them)."""
    sys.path.insert(0, str(REPO / "tests"))
    import torchvision.datasets.cifar

    import datagen

    torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True
    datagen.cifar10_files(work / "cifar_generated", per_batch=10_000)
    return ["data=cifar10", f"data.root={work / 'cifar_generated'}"]


def recipe(work: Path, data: list[str], experiment: str, seed: int, extra: list[str]) -> dict[str, Any]:
    """Train one recipe in this process (generated CIFAR files need the checksum bypass here), then eval its
    best checkpoint on val (it must reproduce the recorded val loss) and on test when the data has one."""
    from nettrain.cli import main

    run_dir = work / f"{experiment}_seed{seed}"
    start = time.perf_counter()
    code = _in_process(main, ["train", f"+experiment={experiment}", *data, f"trainer.seed={seed}",
                              f"hydra.run.dir={run_dir}", *extra])
    wall = time.perf_counter() - start
    if code != 0:
        return {"seed": seed, "ok": False, "error": f"train exited {code}"}
    record = json.loads((run_dir / "metrics.json").read_text())
    row = {"seed": seed, "epochs": record["epochs"], "wall_seconds": round(wall, 1),
           "train_seconds": round(sum(h["seconds"] for h in record["history"]), 1),
           "epoch_seconds": [h["seconds"] for h in record["history"]], "val_accuracy": record["best"].get("val_accuracy")}
    evaluated = _eval(main, run_dir, work / f"{run_dir.name}_val", "val")
    row["eval_reproduces_val"] = abs(evaluated.get("loss", float("nan")) - record["best"]["val_loss"]) <= 1e-6 * abs(
        record["best"]["val_loss"])
    test = _eval(main, run_dir, work / f"{run_dir.name}_test", "test")
    row["test_accuracy"] = test.get("accuracy")
    row["ok"] = row["eval_reproduces_val"]
    return row


def _eval(main: Any, run_dir: Path, out: Path, split: str) -> dict[str, Any]:
    code = _in_process(main, ["eval", str(run_dir), f"split={split}", f"output={out}", "--json"])
    return json.loads((out / "metrics.json").read_text()) if code == 0 else {}


def _in_process(main: Any, argv: list[str]) -> int:
    quiet = io.StringIO()  # eval --json prints the metrics: they go to the files, not to the table
    stdout, sys.stdout = sys.stdout, quiet
    try:
        return int(main(argv) or 0)
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.stdout = stdout


def cifar_part(name: str, seeds: tuple[int, ...], data: list[str], work: Path, extra: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    rows = [recipe(work, data, name, seed, extra) for seed in seeds]
    done = [r for r in rows if "val_accuracy" in r]
    summary: dict[str, Any] = {"part": name, "ok": len(done) == len(rows) and all(r["ok"] for r in rows),
                               "seconds": round(time.perf_counter() - start, 1), "runs": rows}
    if not done:
        summary["result"] = "; ".join(r.get("error", "") for r in rows)
        return summary
    for key in ("val_accuracy", "test_accuracy", "train_seconds"):
        values = [r[key] for r in done if r.get(key) is not None]
        if values:
            summary[f"mean_{key}"] = round(statistics.mean(values), 4)
    summary["result"] = (f"{len(done)} run(s), {done[0]['epochs']} epochs: train {summary['mean_train_seconds']:.1f} s "
                         f"(mean), val {summary['mean_val_accuracy']:.4f}" +
                         (f", test {summary['mean_test_accuracy']:.4f}" if "mean_test_accuracy" in summary else "") +
                         ("" if all(r["eval_reproduces_val"] for r in done) else "; eval did NOT reproduce val"))
    return summary


def shakespeare(work: Path, text: Path | None, extra: list[str]) -> dict[str, Any]:
    """`+experiment=shakespeare_char` on `text` (a generated one when None): its curve, and when it first reached
    LM_TARGET. Seconds are the run's epochs' (steps and validations; not start-up or the text's encoding)."""
    from nettrain.cli import main

    if text is None:
        sys.path.insert(0, str(REPO / "tests"))
        import datagen

        text = datagen.sentences(work / "generated.txt", lines=40_000)
    run_dir = work / "shakespeare_char"
    start = time.perf_counter()
    code = _in_process(main, ["train", "+experiment=shakespeare_char", f"data.path={text}", f"hydra.run.dir={run_dir}",
                              *extra])
    wall = time.perf_counter() - start
    if code != 0:
        return {"part": "shakespeare", "ok": False, "seconds": round(wall, 1), "result": f"train exited {code}"}
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    curve, elapsed = [], 0.0
    for h in history:
        elapsed += h["seconds"]
        curve.append({"step": h["step"], "seconds": round(elapsed, 1), "val_loss": round(h["val_loss"], 4),
                      "tokens_per_sec": h.get("train_tokens_per_sec")})
    reached = next((c for c in curve if c["val_loss"] <= LM_TARGET), None)
    best = min(c["val_loss"] for c in curve)
    result = (f"val {best:.4f} nats/char (best) after {curve[-1]['step']:,} steps, {curve[-1]['seconds']:.0f} s; "
              + (f"<= {LM_TARGET} first at step {reached['step']:,}, {reached['seconds']:.0f} s" if reached
                 else f"never <= {LM_TARGET}") + f"; {curve[-1]['tokens_per_sec']:,.0f} tokens/s")
    return {"part": "shakespeare", "ok": reached is not None and reached["seconds"] <= LM_SECONDS,
            "seconds": round(wall, 1), "curve": curve, "result": result}


def default(work: Path) -> dict[str, Any]:
    times = {}
    for device in ("auto", "cpu"):
        code, out, seconds = run("default", [sys.executable, "-m", "nettrain", "train", f"trainer.device={device}",
                                             f"hydra.run.dir={work / ('default_' + device)}"], work, 180)
        if code != 0:
            return {"part": "default", "ok": False, "seconds": round(seconds, 1), "result": out[-500:]}
        times[device] = seconds
    # Both are mostly start-up (imports): this catches a GPU path several times slower, not noise.
    return {"part": "default", "ok": times["auto"] <= times["cpu"] * 1.25, "seconds": round(sum(times.values()), 1),
            "result": f"default job {times['auto']:.1f} s on the GPU (device=auto) vs {times['cpu']:.1f} s on the CPU"}


def with_wheels(wheels: Path) -> None:
    """Install `wheels` (hydra-core, omegaconf, antlr4: what the GPU image lacks) into a temp dir and restart this
    script with it on the path; make the source tree's configs importable as nettrain.configs (a wheel install
    maps configs/ there; the device's checkout is not installed)."""
    target = Path(tempfile.mkdtemp(prefix="nettrain-wheels-"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                    str(target), *map(str, sorted(wheels.glob("*.whl")))], check=True)
    link = REPO / "nettrain" / "configs"
    if not link.exists():
        link.symlink_to(REPO / "configs", target_is_directory=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    argv = [a for i, a in enumerate(sys.argv) if a != "--wheels" and (i == 0 or sys.argv[i - 1] != "--wheels")]
    os.execve(sys.executable, [sys.executable, *argv], env)


def table(device: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [f"# gpu_check on {device['gpu']} (sm {device['capability']}), torch {device['torch']}, CUDA {device['cuda']}",
             "", "| part | ok | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {'ok' if r['ok'] else 'FAIL'} | {r['seconds']} | {str(r['result']).replace(chr(10), '; ')} |"
              for r in rows]
    for r in rows:
        for run_row in r.get("runs", []):
            lines.append(f"| {r['part']} seed {run_row['seed']} | {'ok' if run_row['ok'] else 'FAIL'} | "
                         f"{run_row.get('train_seconds', '')} | epochs {run_row.get('epochs')}, val {run_row.get('val_accuracy')}, "
                         f"test {run_row.get('test_accuracy')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar", type=Path, metavar="DIR", help="CIFAR-10 as an image folder: DIR/{train,val}[,test]/<class>")
    parser.add_argument("--cifar-npz", type=Path, metavar="FILE", help="CIFAR-10's training images as the npz of JPEG bytes")
    parser.add_argument("--text", type=Path, metavar="FILE", help="tiny shakespeare, for the language-model recipe")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write gpu_check.json and gpu_check.md there")
    parser.add_argument("--wheels", type=Path, metavar="DIR", help="install these wheels first (what the machine lacks)")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the recipes (repeatable), e.g. --set trainer.compile=true")
    parser.add_argument("--log", type=Path, metavar="DIR", help="write each part's whole output to DIR/<part>.log")
    args = parser.parse_args()
    if args.wheels is not None:
        with_wheels(args.wheels)
    global LOG
    if args.log is not None:
        args.log.mkdir(parents=True, exist_ok=True)
        LOG = args.log
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    device = {"gpu": torch.cuda.get_device_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability())),
              "torch": torch.__version__, "cuda": torch.version.cuda}
    rows = []
    with tempfile.TemporaryDirectory(prefix="nettrain-gpu-check-") as tmp:
        work = Path(tmp)
        folder = args.cifar or (unpack_npz(args.cifar_npz, work / "cifar10") if args.cifar_npz else None)
        data = ["data=imagefolder", f"data.root={folder}", "data.cache=true"] if folder else None
        for part in PARTS:
            if part in args.skip.split(","):
                continue
            try:
                if part in ("cifar10", "cifar10_fast"):
                    seeds = FAST_SEEDS if part == "cifar10_fast" else (0,)
                    rows.append(cifar_part(part, seeds, data or generated_cifar(work), work, args.set))
                elif part == "shakespeare":
                    rows.append(shakespeare(work, args.text, args.set))
                else:
                    rows.append(globals()[part](work))
            except Exception as e:  # noqa: BLE001 - one broken part must not hide the others' results
                rows.append({"part": part, "ok": False, "seconds": 0, "result": f"{type(e).__name__}: {e}"})
            r = rows[-1]
            print(f"{r['part']:<13} {'ok ' if r['ok'] else 'FAIL'} {r['seconds']:>7.1f} s  {r['result']}", flush=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps({"device": device, "parts": rows}, indent=2) + "\n")
        (args.out / "gpu_check.md").write_text(table(device, rows))
    print(f"on {device['gpu']} (sm {device['capability']}), torch {device['torch']}, CUDA {device['cuda']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
