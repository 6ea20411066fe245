"""Text classification: nettrain's recipes against TF-IDF + a linear SVM, on a train and a test file.

    .venv/bin/python scripts/bench_text.py --train DIR/trec_train.csv --test DIR/trec_test.csv --target label-coarse
    .venv/bin/python scripts/bench_text.py ... --runs "+experiment=text_intents" "+experiment=text_intents model=bag"

The baseline is scikit-learn's TfidfVectorizer (word 1-2 grams and char_wb 2-5 grams, sublinear tf)
and LinearSVC, fitted on the whole train file. Each run is `nettrain train data.path=TRAIN ...`
(in a fresh process, as a user runs it; its val split is held out of TRAIN) followed by
`nettrain eval split=test data.test_path=TEST`; reported: test accuracy and the training seconds
recorded in the run's metrics.json (sum of epoch times, start-up excluded), and the wall clock of
the train command. Runs land in a temp dir unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from nettrain_process import nettrain  # beside this script


def baseline(train: str, test: str, text: str, target: str) -> tuple[float, float]:
    """(test accuracy, seconds) of TF-IDF word + char n-grams and LinearSVC."""
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union
    from sklearn.svm import LinearSVC

    train_rows, test_rows = pd.read_csv(train), pd.read_csv(test)
    started = time.perf_counter()
    model = make_pipeline(make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                                     TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
                          LinearSVC())
    model.fit(train_rows[text].astype(str), train_rows[target].astype(str))
    accuracy = float((model.predict(test_rows[text].astype(str)) == test_rows[target].astype(str)).mean())
    return accuracy, time.perf_counter() - started


def run(overrides: str, train: str, test: str, text: str, target: str, run_dir: Path) -> dict[str, float | str]:
    started = time.perf_counter()
    nettrain("train", *overrides.split(), f"data.path={train}", f"data.text={text}", f"data.target={target}",
             f"hydra.run.dir={run_dir}")
    wall = time.perf_counter() - started
    record = json.loads((run_dir / "metrics.json").read_text())
    nettrain("eval", f"ckpt={run_dir}", "split=test", f"data.test_path={test}", f"output={run_dir / 'eval' / 'test'}")
    report = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    return {"run": overrides, "test_accuracy": report["accuracy"], "val_accuracy": record["best"]["val_accuracy"],
            "epochs": record["epochs"], "train_seconds": sum(r["seconds"] for r in record["history"]), "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="a CSV/TSV/JSONL file of labelled texts (yours: nothing is bundled)")
    parser.add_argument("--test", required=True, help="the file to score on, same columns")
    parser.add_argument("--text", default="text")
    parser.add_argument("--target", default="label")
    parser.add_argument("--runs", nargs="*", default=["+experiment=text_intents"])
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    args = parser.parse_args()
    train, test = os.path.abspath(args.train), os.path.abspath(args.test)
    accuracy, seconds = baseline(train, test, args.text, args.target)
    print(f"{'TF-IDF + LinearSVC':40s} test accuracy {accuracy:.3f}  fit {seconds:.1f}s", flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_text_"))
    for i, overrides in enumerate(args.runs):
        r = run(overrides, train, test, args.text, args.target, out / f"run{i}")
        print(f"{r['run']:40s} test accuracy {r['test_accuracy']:.3f}  val {r['val_accuracy']:.3f}  "
              f"{r['epochs']} epochs, training {r['train_seconds']:.0f}s, train command {r['wall_seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
