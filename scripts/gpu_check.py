"""One command that proves nettrain's GPU path on whatever CUDA GPU this machine has (~5 minutes on an H100).

    python scripts/gpu_check.py            # a table
    python scripts/gpu_check.py --json     # the same as JSON
    python scripts/gpu_check.py --skip bench,full   # parts: tests, bench, full, default
    python scripts/gpu_check.py --skip tests,bench,default --set trainer.compile=true   # overrides for `full`
    python scripts/gpu_check.py --log logs/   # and each part's whole output in logs/<part>.log

Parts, each timed, each a row of the table:
  tests    `pytest -m cuda`: round trips on CUDA (train, resume, eval exactness, predict, export,
           precisions, channels-last, compile, CPU use of a GPU checkpoint, GPU augmentation)
  bench    scripts/bench.py's cases at real size (nettrain vs the hand-written loop, samples/s)
  full     the `+experiment=cifar10` recipe at full size: 50,000 generated 32 px images (CIFAR-10's
           files, so the timing is real and the accuracy is not), all its epochs, its wall clock against
           the 60 s bar, then `nettrain eval` reproducing its recorded val loss
  default  the default `nettrain train` (digits MLP): wall clock on the GPU and with trainer.device=cpu
Exit code 1 when any part failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PARTS = ("tests", "bench", "full", "default")
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
                              str(REPO / "tests")], REPO, 240)
    summary = next((line for line in reversed(out.splitlines()) if " passed" in line or " failed" in line), out[-300:])
    failed = [line for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]  # pytest -ra's reasons
    return {"part": "tests", "ok": code == 0, "seconds": round(seconds, 1), "result": "\n".join([summary.strip("= "), *failed])}


def bench(work: Path) -> dict[str, Any]:
    code, out, seconds = run("bench", [sys.executable, str(REPO / "scripts" / "bench.py"), "--json", "--no-ddp", "--no-startup",
                              "--rounds", "3"], REPO, 300)
    try:
        rows = json.loads(out[out.index("["):out.rindex("]") + 1])
    except ValueError:
        return {"part": "bench", "ok": False, "seconds": round(seconds, 1), "result": out[-500:]}
    worst = min(r["ratio"] for r in rows)
    return {"part": "bench", "ok": code == 0 and worst >= 0.95, "seconds": round(seconds, 1), "rows": rows,
            "result": "; ".join(f"{r['case']} {r['nettrain']:,}/s = {r['ratio']:.3f}x raw" for r in rows)}


def full(work: Path, overrides: list[str]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    import torchvision.datasets.cifar

    import datagen

    torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True  # generated files, not the real ones
    datagen.cifar10_files(work / "cifar", per_batch=10_000)
    run_dir = work / "full"
    # Generated CIFAR files need the checksum bypass in the training process too: run fit in this one.
    start = time.perf_counter()
    from nettrain.cli import main

    code = _in_process(main, ["train", "+experiment=cifar10", f"data.root={work / 'cifar'}", f"hydra.run.dir={run_dir}",
                              *overrides])
    seconds = time.perf_counter() - start
    if code != 0:
        return {"part": "full", "ok": False, "seconds": round(seconds, 1), "result": f"train exited {code}"}
    record = json.loads((run_dir / "metrics.json").read_text())
    eval_code = _in_process(main, ["eval", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", f"output={work / 'eval'}"])
    evaluated = json.loads((work / "eval" / "metrics.json").read_text()) if eval_code == 0 else {}
    exact = abs(evaluated.get("loss", float("nan")) - record["best"]["val_loss"]) <= 1e-6 * abs(record["best"]["val_loss"])
    epochs = ", ".join(f"{h['seconds']:.1f}" for h in record["history"])
    rate = record["history"][-1]["train_samples_per_sec"]
    return {"part": "full", "ok": exact, "seconds": round(seconds, 1), "history": record["history"],
            "result": f"{len(record['history'])} epochs in {seconds:.1f} s (each {epochs} s; last {rate:,.0f} "
                      f"samples/s); eval val loss {evaluated.get('loss', float('nan')):.6f} vs recorded "
                      f"{record['best']['val_loss']:.6f} ({'exact' if exact else 'MISMATCH'})"}


def _in_process(main: Any, argv: list[str]) -> int:
    try:
        return int(main(argv) or 0)
    except SystemExit as e:
        return int(e.code or 0)


def default(work: Path) -> dict[str, Any]:
    times = {}
    for device in ("auto", "cpu"):
        code, out, seconds = run("default", [sys.executable, "-m", "nettrain", "train", f"trainer.device={device}",
                                  f"hydra.run.dir={work / ('default_' + device)}"], work, 180)
        if code != 0:
            return {"part": "default", "ok": False, "seconds": round(seconds, 1), "result": out[-500:]}
        times[device] = seconds
    # Both are mostly start-up (imports, ~13 s of 16 on an H200 with 16 cores): this catches a GPU path
    # that is several times slower, not the noise between two processes.
    return {"part": "default", "ok": times["auto"] <= times["cpu"] * 1.25, "seconds": round(sum(times.values()), 1),
            "result": f"default job {times['auto']:.1f} s on the GPU (device=auto) vs {times['cpu']:.1f} s on the CPU"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to skip: {', '.join(PARTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for the `full` run (repeatable), e.g. --set trainer.compile=true")
    parser.add_argument("--log", type=Path, metavar="DIR", help="write each part's whole output to DIR/<part>.log")
    args = parser.parse_args()
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
        for part in PARTS:
            if part in args.skip.split(","):
                continue
            try:
                rows.append(full(Path(tmp), args.set) if part == "full" else globals()[part](Path(tmp)))
            except Exception as e:  # noqa: BLE001 - one broken part must not hide the others' results
                rows.append({"part": part, "ok": False, "seconds": 0, "result": f"{type(e).__name__}: {e}"})
            if not args.json:
                r = rows[-1]
                print(f"{r['part']:<8} {'ok ' if r['ok'] else 'FAIL'} {r['seconds']:>7.1f} s  {r['result']}", flush=True)
    if args.json:
        print(json.dumps({"device": device, "parts": rows}, indent=2))
    else:
        print(f"on {device['gpu']} (sm {device['capability']}), torch {device['torch']}, CUDA {device['cuda']}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
