"""What int8 and fp16 exports cost and gain on real data: for each model, its fp32 ONNX file next to the int8 and
fp16 ones (`nettrain export RUN quantize=...`): file size, val accuracy next to the PyTorch model's, how often the
labels agree with PyTorch's, CPU latency at batch 1 (p50, p95) and throughput at batch 32, on a stated number of
threads, with the targets of docs/edge.md checked.

    .venv/bin/python scripts/bench_export.py --data DATA
    .venv/bin/python scripts/bench_export.py --data DIR --only resnet18 --run resnet18=outputs/2025-01-31/12-00-00

  --data DIR        the real data: DIR/mnist_png, DIR/cats_dogs, DIR/text/trec_{train,test}.csv
  --out DIR         where runs and exports go (default: a temp dir); a case whose run is there is not retrained
  --run CASE=DIR    use this trained run for CASE instead of training it
  --only A,B        only these cases (mlp, cnn, resnet18, text)
  --threads N       threads of the timings (default: every core this process may use)
  --variants        also the static int8 cases (cnn, resnet18) quantized other ways: the other calibrations,
                    one weight scale per tensor, the head (Gemm) left in float, int8 activations
  --json            the results as JSON instead of the table

Each case is trained (a fresh `nettrain train` process, as a user runs it) unless its run exists, then exported in
int8 and fp16 with export.force=true, so a file that would be refused is still measured (the table says so). The
timings are of single calls on this machine: on a shared one they are noisy (the p95 most), so rerun on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from nettrain_process import nettrain  # beside this script

# Case: (what it is, the train overrides given DATA, the targets of docs/edge.md for its int8 file).
CASES: dict[str, tuple[str, list[str], dict[str, float]]] = {
    "mlp": ("MLP, digits (nettrain train's default)", [], {}),
    "cnn": ("CNN, MNIST 4,000 (+experiment=mnist)", ["+experiment=mnist", "data.root={data}/mnist_png"],
            {"max_drop": 0.3}),
    "resnet18": ("ResNet-18 at 64 px, cats/dogs 800 (500 steps)",
                 ["+experiment=cats_dogs", "model=resnet18", "data.root={data}/cats_dogs", "trainer.max_steps=500",
                  "trainer.max_epochs=10"], {"max_size": 0.3, "max_drop": 0.5, "max_latency": 0.5}),
    "text": ("bag of n-grams, TREC 6 classes (+experiment=text_intents)",
             ["+experiment=text_intents", "data.path={data}/text/trec_train.csv",
              "data.test_path={data}/text/trec_test.csv", "data.target=label-coarse"], {}),
}
PRECISIONS = ("int8", "fp16")
# The other ways of quantizing a static int8 case (--variants), as export.KEY=VALUE arguments.
VARIANTS = {
    "percentile calibration (default)": [],
    "minmax calibration": ["export.calibration_method=minmax"],
    "entropy calibration": ["export.calibration_method=entropy"],
    "one weight scale per tensor": ["export.per_channel=false"],
    "head (Gemm) in float": ["export.keep_float=[Gemm]"],
    "int8 activations": ["export.activations=int8"],
}


def trained(case: str, out: Path, data: str, given: dict[str, str]) -> Path:
    """The run of `case`: the one given, the one already in `out`, or a new one."""
    if case in given:
        return Path(given[case])
    run = out / case
    if not (run / "checkpoints" / "best.pt").is_file():
        nettrain("train", f"hydra.run.dir={run}", *(a.format(data=data) for a in CASES[case][1]))
    return run


def exported(case: str, run: Path, out: Path, precision: str, threads: int | None, *extra: str,
             tag: str = "") -> dict[str, Any]:
    """The .json of `run` exported at `precision` (its measured figures, the fp32 file's beside them)."""
    folder = out / "exports" / (case + tag)
    nettrain("export", str(run), f"quantize={precision}", f"output={folder}", "export.force=true",
             *([f"export.threads={threads}"] if threads else []), *extra)
    return json.loads((folder / f"best.{precision}.json").read_text())


def variants(case: str, run: Path, out: Path, threads: int | None) -> list[dict[str, Any]]:
    """The int8 file of a static case quantized each way of VARIANTS, with its fp32 file timed beside it."""
    table = []
    for i, (name, extra) in enumerate(VARIANTS.items()):
        info = exported(case, run, out, "int8", threads, *extra, tag=f"-variant{i}")
        files = info["measured"]["files"]
        f, fp32 = files["int8 onnx"], files["fp32 onnx"]
        table.append({"case": case, "variant": name, **_figures(f), "seconds": info["quantization"]["seconds"],
                      "latency_ratio": f["speed"]["latency_ms"]["p50"] / fp32["speed"]["latency_ms"]["p50"]})
    return table


def rows(case: str, infos: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per file: fp32 (from the int8 export's measuring), int8, fp16; ratios against fp32."""
    first = infos[PRECISIONS[0]]["measured"]
    fp32 = first["files"]["fp32 onnx"]
    table = [{"case": case, "file": "fp32", **_figures(fp32), "pytorch": first.get("pytorch", {}).get("accuracy")}]
    for precision, info in infos.items():
        f = info["measured"]["files"][f"{precision} onnx"]
        table.append({"case": case, "file": precision, **_figures(f),
                      "size_ratio": f["size_bytes"] / fp32["size_bytes"],
                      "latency_ratio": f["speed"]["latency_ms"]["p50"] / fp32["speed"]["latency_ms"]["p50"],
                      "method": (info.get("quantization") or {}).get("method")})
    return table


def _figures(f: dict[str, Any]) -> dict[str, Any]:
    s = f["speed"]
    return {"size_bytes": f["size_bytes"], "accuracy": f.get("accuracy"), "drop": f.get("drop"),
            "agreement": f.get("agreement"), "p50_ms": s["latency_ms"]["p50"], "p95_ms": s["latency_ms"]["p95"],
            "per_s": s["throughput_per_s"], "threads": s["threads"]}


def targets(case: str, table: list[dict[str, Any]]) -> list[str]:
    """The int8 file against the case's targets: met or missed, with the figure."""
    goal = CASES[case][2]
    int8 = next(r for r in table if r["file"] == "int8")
    checks = [("size", "max_size", int8["size_ratio"], "{:.2f}x fp32"),
              ("accuracy lost", "max_drop", int8["drop"], "{:.2f} points"),
              ("latency at batch 1", "max_latency", int8["latency_ratio"], "{:.2f}x fp32")]
    # rounded: 0.615 - 0.610 is 0.50000000004 points in floating point, one image of 200 either way
    return [f"{case} int8 {what}: {fmt.format(value)} (target <= {goal[key]:g}): "
            f"{'met' if round(value, 6) <= goal[key] else 'MISSED'}"
            for what, key, value, fmt in checks if key in goal and value is not None]


def print_table(results: dict[str, list[dict[str, Any]]]) -> None:
    print("| model | file | size | x fp32 | val accuracy | drop (points) | agrees with PyTorch | p50 ms | p95 ms "
          "| batch 32 /s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case, table in results.items():
        for r in table:
            accuracy = f"{r['accuracy']:.4f}" if r["accuracy"] is not None else "-"
            if r["file"] == "fp32" and r.get("pytorch") is not None:
                accuracy += f" (PyTorch {r['pytorch']:.4f})"
            print(f"| {CASES[case][0] if r['file'] == 'fp32' else ''} | {r['file']}"
                  f"{' (' + r['method'] + ')' if r.get('method') in ('static', 'dynamic') else ''} "
                  f"| {r['size_bytes'] / 1e6:.3f} MB | {r.get('size_ratio', 1.0):.2f} | {accuracy} "
                  f"| {_maybe(r['drop'], '{:+.2f}')} | {_maybe(r['agreement'], '{:.1%}')} | {r['p50_ms']:.3f} "
                  f"| {r['p95_ms']:.3f} | {r['per_s']:.0f} |")
    threads = {r["threads"] for table in results.values() for r in table}
    print(f"\nCPU: {_cpu()}; {', '.join(map(str, sorted(threads)))} thread(s); drop: PyTorch's val accuracy minus "
          f"the file's, in points")
    for case, table in results.items():
        for line in targets(case, table):
            print(line)


def print_variants(table: list[dict[str, Any]]) -> None:
    print("\n| model | int8 made with | val accuracy | drop (points) | agrees with PyTorch | p50 ms | x fp32 p50 "
          "| quantizing s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['case']} | {r['variant']} | {_maybe(r['accuracy'], '{:.4f}')} | {_maybe(r['drop'], '{:+.2f}')} "
              f"| {_maybe(r['agreement'], '{:.1%}')} | {r['p50_ms']:.3f} | {r['latency_ratio']:.2f} | {r['seconds']:.1f} |")


def _maybe(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "unknown")
    return name + (" (AVX-512 VNNI)" if "avx512_vnni" in info else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--run", action="append", default=[], metavar="CASE=DIR")
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    given = dict(r.split("=", 1) for r in args.run)
    cases = args.only.split(",")
    unknown = [c for c in cases + list(given) if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; allowed: {', '.join(CASES)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_export_"))
    results, compared = {}, []
    for case in cases:
        run = trained(case, out, args.data, given)
        results[case] = rows(case, {p: exported(case, run, out, p, args.threads) for p in PRECISIONS})
        if args.variants and results[case][1]["method"] == "static":
            compared += variants(case, run, out, args.threads)
        print(f"{case}: done ({run})", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"files": results, "variants": compared}, indent=2))
        return
    print_table(results)
    if compared:
        print_variants(compared)


if __name__ == "__main__":
    main()
