"""How well nettrain's recipes learn on real data: each recipe trained on the folders and files you
name, its score and wall clock next to the figures measured when the recipe was tuned.

    .venv/bin/python scripts/quality.py --mnist DIR --cats-dogs DIR --cifar DIR --csv FILE:TARGET
    .venv/bin/python scripts/quality.py --csv ai4i2020.csv:"Machine failure":UDI,"Product ID",TWF,HDF,PWF,OSF,RNF:Type --json

  --mnist DIR           +experiment=mnist      data.root=DIR   (digit folders: DIR/{train,val}/<digit>/ or DIR/<digit>/)
  --cats-dogs DIR       +experiment=cats_dogs  data.root=DIR   (photo folders, any classes)
  --cifar DIR           +experiment=cifar10    data=imagefolder data.root=DIR   (a folder of CIFAR-10 images)
  --csv FILE:TARGET[:DROP,...[:CATEGORICAL,...]]  +experiment=tabular  data.path=FILE data.target=TARGET
                        (data.drop=[DROP,...] data.categorical=[CATEGORICAL,...]; AI4I's failure-mode flags
                        TWF..RNF restate the target, so they are dropped above)
  --text TRAIN:TEST:TARGET      +experiment=text_intents on TRAIN, scored on TEST (text column `text`)
  --set KEY=VALUE       an override added to every run (e.g. trainer.max_epochs=3 for a smoke test)

Each run is `nettrain train ...` in a fresh process, as a user runs it (caches and runs go to --out,
a temp dir by default, never into the data folders). Reported: the best epoch's val accuracy (for a
binary target also the rare class's F1, for a numeric one RMSE), the train command's wall clock
(start-up, decoding and caching included) and the reference figures: for a CSV, a scikit-learn
RandomForest on the same split, trained here; for the others, what the recipe scored on the shared
real data when it was tuned (REFERENCE) and the bar it has to clear.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Measured on the shared real data (2 CPU cores) when the recipes were tuned: README "Quality".
REFERENCE: dict[str, dict[str, Any]] = {
    "mnist": {"data": "4,000 MNIST digits (PNG)", "accuracy": 0.994, "seconds": 51, "bar": ">= 0.985 in <= 120 s"},
    "cats_dogs": {"data": "800 cat/dog photos", "accuracy": 0.810, "seconds": 359, "bar": ">= 0.80 in <= 600 s"},
    "cifar10": {"data": "5,000 CIFAR-10 images", "accuracy": None, "seconds": None,
                "bar": "full CIFAR-10 on one H100: >= 0.94 test in <= 60 s"},
}


def nettrain(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nettrain", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"nettrain {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - started


def train(name: str, out: Path, extra: list[str], *args: str) -> dict[str, Any]:
    """Train one recipe; its best epoch's val metrics and the wall clock."""
    run_dir = out / name
    _, seconds = nettrain("train", f"hydra.run.dir={run_dir}", *args, *extra)
    record = json.loads((run_dir / "metrics.json").read_text())
    best = record["history"][record["best_epoch"] - 1] if record.get("best_epoch") else record["history"][-1]
    result = {"recipe": name, "run_dir": str(run_dir), "seconds": round(seconds, 1), "epochs": record["epochs"],
              "status": record["status"]}
    for key in ("val_accuracy", "val_f1", "val_precision", "val_recall", "val_rmse"):
        if key in best:
            result[key.removeprefix("val_")] = round(best[key], 4)
    return result


def image_recipe(name: str, root: str, out: Path, extra: list[str], *args: str) -> dict[str, Any]:
    result = train(name, out, extra, f"+experiment={name}", *args, f"data.root={root}",
                   f"data.cache_dir={out / 'cache'}")
    return result | {"data": root, "reference": REFERENCE[name]}


def forest_baseline(run_dir: str) -> dict[str, Any]:
    """A RandomForest on the split the run at `run_dir` trained on (its own file, columns, val_fraction
    and seed, as nettrain split them), for reference."""
    import numpy as np
    import pandas as pd
    from omegaconf import OmegaConf
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.metrics import f1_score

    sys.path.insert(0, str(REPO))
    from nettrain.data.tabular import choose_columns, read_table, split_rows

    cfg = OmegaConf.load(Path(run_dir) / ".hydra" / "config.yaml")
    path = cfg.data.path
    table = read_table(path, list(cfg.data.get("categorical") or []))
    table = table[table[cfg.data.target].notna()]
    task, class_names, y, train_idx, val_idx = split_rows(table, cfg.data, cfg.trainer.seed, path)
    features, _ = choose_columns(table, cfg.data, path)
    x = pd.get_dummies(table[features], dummy_na=True).fillna(0).to_numpy(np.float64)
    split = f"trainer.seed={cfg.trainer.seed}, data.val_fraction={cfg.data.val_fraction}"
    started = time.perf_counter()
    if task == "regression":
        model = RandomForestRegressor(300, random_state=0, n_jobs=-1).fit(x[train_idx], y[train_idx])
        error = model.predict(x[val_idx]) - y[val_idx]
        return {"model": "RandomForestRegressor(300)", "rmse": round(float(np.sqrt(np.mean(error ** 2))), 4),
                "split": split, "seconds": round(time.perf_counter() - started, 1)}
    model = RandomForestClassifier(300, random_state=0, n_jobs=-1).fit(x[train_idx], y[train_idx])
    predicted = model.predict(x[val_idx])
    result = {"model": "RandomForestClassifier(300)", "accuracy": round(float((predicted == y[val_idx]).mean()), 4),
              "split": split, "seconds": round(time.perf_counter() - started, 1)}
    if len(class_names) == 2:  # the rare class as training sees it
        rare = int(np.argmin(np.bincount(y[train_idx], minlength=2)))
        result["f1"] = round(float(f1_score(y[val_idx], predicted, pos_label=rare)), 4)
    return result


def csv_recipe(spec: str, out: Path, extra: list[str]) -> dict[str, Any]:
    path, target, *rest = spec.split(":")
    drop, categorical = ([c for c in part.split(",") if c] for part in [*rest, "", ""][:2])
    name = f"tabular_{Path(path).stem}"
    args = ["+experiment=tabular", f"data.path={path}", f"data.target={target}"]
    for key, columns in (("drop", drop), ("categorical", categorical)):
        if columns:
            args.append(f"data.{key}=[" + ",".join(columns) + "]")
    result = train(name, out, extra, *args)
    return result | {"recipe": "tabular", "data": path, "reference": forest_baseline(result["run_dir"])}


def text_recipe(spec: str, out: Path, extra: list[str]) -> dict[str, Any]:
    train_file, test_file, target = spec.split(":")
    result = train("text_intents", out, extra, "+experiment=text_intents", f"data.path={train_file}",
                   f"data.target={target}")
    report = Path(result["run_dir"]) / "eval" / "test"
    nettrain("eval", f"ckpt={result['run_dir']}", "split=test", f"data.test_path={test_file}", f"output={report}")
    test = json.loads((report / "metrics.json").read_text())
    return result | {"data": train_file, "test_accuracy": round(test["accuracy"], 4),
                     "reference": {"model": "TF-IDF+LinearSVC (scripts/bench_text.py)", "test_accuracy": 0.882}}


SHORT = {"accuracy": "acc", "f1": "F1", "rmse": "RMSE", "test_accuracy": "test acc"}


def _scores(r: dict[str, Any]) -> str:
    return ", ".join(f"{SHORT[k]} {r[k]:.3f}" for k in SHORT if r.get(k) is not None)


def show(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="nettrain recipes on real data")
    for column in ("recipe", "data", "score", "wall", "epochs", "reference", "bar"):
        table.add_column(column, justify="right" if column in ("wall", "epochs") else "left")
    for r in results:
        ref = r["reference"]
        took = f" ({ref['seconds']:.0f} s)" if ref.get("seconds") is not None else ""
        reference = (f"{ref['model'].split('(')[0]} " if "model" in ref else "tuned: ") + _scores(ref) + took
        table.add_row(r["recipe"], Path(r["data"]).name, _scores(r), f"{r['seconds']:.0f} s", str(r["epochs"]),
                      reference, ref.get("bar", ""))
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--mnist")
    parser.add_argument("--cats-dogs")
    parser.add_argument("--cifar")
    parser.add_argument("--csv", action="append", default=[])
    parser.add_argument("--text")
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE added to every run")
    parser.add_argument("--out", help="where runs and caches go (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.mnist or args.cats_dogs or args.cifar or args.csv or args.text):
        parser.error("name at least one data set (--mnist, --cats-dogs, --cifar, --csv, --text)")
    out = Path(args.out or tempfile.mkdtemp(prefix="nettrain-quality-"))
    results = []
    if args.mnist:
        results.append(image_recipe("mnist", args.mnist, out, args.set))
    if args.cats_dogs:
        results.append(image_recipe("cats_dogs", args.cats_dogs, out, args.set))
    if args.cifar:
        results.append(image_recipe("cifar10", args.cifar, out, args.set, "data=imagefolder", "data.cache=true"))
    for spec in args.csv:
        results.append(csv_recipe(spec, out, args.set))
    if args.text:
        results.append(text_recipe(args.text, out, args.set))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)


if __name__ == "__main__":
    main()
