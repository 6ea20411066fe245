"""`nettrain update` on real data: class-incremental learning, measured against a full retrain and plain fine-tuning.

    .venv/bin/python scripts/bench_update.py --data DATA            # DATA/text/, DATA/mnist_png, DATA/tabular
    .venv/bin/python scripts/bench_update.py --data DATA --only trec --out /tmp/bench_update

For each data set, a run is trained with some classes left out (the "before" model); `nettrain update` then
teaches it those classes:
  TREC (text/trec_{train,test}.csv, `+experiment=text_intents`, coarse labels): class --trec-class left out of
        training; the update learns its training questions as feedback records (the store `nettrain serve`
        writes, RUN/feedback/*.jsonl).
  MNIST (mnist_png/train, `+experiment=mnist`): digits --mnist-classes left out; the update learns their
        training images as new data (`data.root=DIR` of those digits' folders).
Each update holds out update.holdout of the new examples for its gate. Compared with it: a full retrain (every
class from scratch, the same recipe) and plain fine-tuning (`update.replay=0`: the new examples alone), and
the update with distillation (`update.distill=1`). Every model is then scored on the test set the runs never
saw (TREC's trec_test.csv; MNIST's mnist_png/val, the runs' own val split being held out of mnist_png/train):
accuracy on the old classes and on the new ones.
  Text (text/tinyshakespeare.txt, `+experiment=shakespeare_char_cpu` for --lm-steps steps): a character-level
        language model learns a new kind of text, --questions TREC training questions (their characters outside
        Shakespeare's vocabulary left out: data.unknown_chars=skip); scored by the loss per character on the run's own validation text
        (the last 10 % of Shakespeare: old) and on trec_test.csv's questions (new, no run saw them).
Seconds: the wall time of the command (a fresh process, as a
user runs it; a trained run kept from an earlier bench's --out shows the seconds it recorded). Prints one
markdown table per data set and writes OUT/bench_update.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# The updates compared: the default (replay 8, distillation 0.5), without distillation, with less and more
# replay, less replay with the prior corrected, and plain fine-tuning.
UPDATES = (("update (replay 8, distill 0.5)", []), ("update (replay 8)", ["update.distill=0"]),
           ("update (replay 4)", ["update.replay=4", "update.distill=0"]),
           ("update (replay 16)", ["update.replay=16", "update.distill=0"]),
           ("update (replay 1, correct_prior)", ["update.replay=1", "update.distill=0", "update.correct_prior=true"]),
           ("naive fine-tune (replay 0)", ["update.replay=0", "update.distill=0"]))


def nettrain(*args: str, allowed: tuple[int, ...] = (0,)) -> tuple[int, float]:
    """`nettrain ARGS` in a fresh process: (exit code, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "nettrain", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode not in allowed:
        raise SystemExit(f"nettrain {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc.returncode, seconds


def trained(run_dir: Path, *args: str) -> float:
    """`nettrain train ARGS hydra.run.dir=RUN_DIR`: its seconds; a run already completed there (--out of an earlier
    bench) is kept, with the seconds it recorded."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text())["status"] in ("completed", "stopped_early"):
        return float(json.loads(metrics.read_text())["total_seconds"])
    return nettrain("train", *args, f"hydra.run.dir={run_dir}")[1]


def updated(run_dir: Path, *args: str) -> float:
    """`nettrain update ARGS output=RUN_DIR` (a rejected update too): its seconds; an update already done there (an
    earlier bench's --out) is kept, with the seconds it recorded."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text()).get("gate"):
        return float(json.loads(metrics.read_text())["total_seconds"])
    shutil.rmtree(run_dir, ignore_errors=True)
    return nettrain("update", *args, f"output={run_dir}", allowed=(0, 3))[1]


def scores(run_dir: Path, inputs: list[Any], labels: list[str], new: set[str]) -> dict[str, float]:
    """Accuracy of the run's best model on the old classes' and the new classes' test inputs."""
    import torch

    from nettrain.data.text import encoder_for
    from nettrain.data.transforms import load_image
    from nettrain.inference.load import load_model

    loaded = load_model(run_dir, "cpu")
    pre = loaded.spec.preprocessing
    encode = encoder_for(pre) if pre["kind"] == "text" else lambda files: torch.stack([load_image(f, pre) for f in files])
    predicted: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(inputs), 256):
            out = loaded.model(encode(inputs[start:start + 256]))
            predicted += [loaded.spec.class_names[i] for i in out.argmax(-1).tolist()]
    result = {}
    for group, members in (("old", [c not in new for c in labels]), ("new", [c in new for c in labels])):
        hits = [p == t for p, t, m in zip(predicted, labels, members) if m]
        result[group] = sum(hits) / max(len(hits), 1)
    return result


def gate_of(run_dir: Path) -> dict[str, Any]:
    record = json.loads((run_dir / "metrics.json").read_text())
    gate = record.get("gate") or {}
    return {"verdict": gate.get("verdict"), "forgot": gate.get("forgot"), "status": record["status"]}


def trec(data: Path, out: Path, left_out: str) -> list[dict[str, Any]]:
    """TREC coarse: train without `left_out`, then update with its training questions as feedback."""
    from nettrain.serving.feedback import Feedback, FeedbackStore

    rows = list(csv.DictReader(open(data / "text" / "trec_train.csv", newline="")))
    header = ["label-coarse", "label-fine", "text"]
    partial = out / "trec_without.csv"
    with open(partial, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(r for r in rows if r["label-coarse"] != left_out)
    test = list(csv.DictReader(open(data / "text" / "trec_test.csv", newline="")))
    texts, labels = [r["text"] for r in test], [r["label-coarse"] for r in test]
    recipe = ["+experiment=text_intents", "data.target=label-coarse", "data.text=text"]
    results = []

    def train(name: str, path: Path) -> Path:
        seconds = trained(out / name, *recipe, f"data.path={path}")
        results.append({"model": name, **scores(out / name, texts, labels, {left_out}), "seconds": seconds})
        return out / name

    parent = train("before (trained without it)", partial)
    if not (parent / "feedback").is_dir():
        store = FeedbackStore(parent)  # what nettrain serve's clients would have sent
        for i, r in enumerate(r for r in rows if r["label-coarse"] == left_out):
            store.add(Feedback(f"trec-{i}", "text", r["text"], left_out))
        store.close()
    for name, extra in UPDATES:
        seconds = updated(out / name, str(parent), *extra)
        results.append({"model": name, **scores(out / name, texts, labels, {left_out}), "seconds": seconds,
                        **gate_of(out / name)})
    train("full retrain", data / "text" / "trec_train.csv")
    return results


def mnist(data: Path, out: Path, left_out: list[str]) -> list[dict[str, Any]]:
    """MNIST digits: train without `left_out`, then update with their training images as new data."""
    source = data / "mnist_png" / "train"
    partial, new, full = out / "digits_without", out / "digits_new", out / "digits_all"
    for digit in sorted(p.name for p in source.iterdir()):
        for target in (new if digit in left_out else partial, full):
            (target / digit).mkdir(parents=True, exist_ok=True)
            for image in (source / digit).iterdir():
                link = target / digit / image.name
                if not link.exists():
                    link.symlink_to(image)
    test = sorted((data / "mnist_png" / "val").glob("*/*.png"))
    files, labels = [str(p) for p in test], [p.parent.name for p in test]
    recipe = ["+experiment=mnist", f"data.cache_dir={out / 'cache'}"]
    results = []

    def train(name: str, root: Path) -> Path:
        seconds = trained(out / name, *recipe, f"data.root={root}")
        results.append({"model": name, **scores(out / name, files, labels, set(left_out)), "seconds": seconds})
        return out / name

    parent = train("before (trained without them)", partial)
    for name, extra in UPDATES:
        seconds = updated(out / name, str(parent), f"data.root={new}", *extra)
        results.append({"model": name, **scores(out / name, files, labels, set(left_out)), "seconds": seconds,
                        **gate_of(out / name)})
    train("full retrain", full)
    return results


def wine(data: Path, out: Path) -> list[dict[str, Any]]:
    """White wine (`+experiment=tabular`, model.memory=true): trained on 60 % of the rows; 20 % come back as feedback;
    scored on the last 20 %, and on those of them that copy a feedback row (a third of a table's rows repeat)."""
    import random

    from nettrain.serving.feedback import Feedback, FeedbackStore

    rows = list(csv.DictReader(open(data / "tabular" / "winequality-white.csv", newline="")))
    random.Random(0).shuffle(rows)
    cut, end = int(0.6 * len(rows)), int(0.8 * len(rows))
    known, later, test = rows[:cut], rows[cut:end], rows[end:]
    with open(out / "wine_known.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(known)
    features = [c for c in rows[0] if c != "quality"]
    key = lambda r: tuple(r[c] for c in features)  # noqa: E731
    seen = {key(r) for r in later}
    import pandas as pd

    from nettrain.data.tabular import encode_rows
    from nettrain.inference.load import load_model

    def score(run_dir: Path) -> dict[str, float]:
        import torch

        loaded = load_model(run_dir, "cpu")
        with torch.inference_mode():
            out_ = loaded.model(encode_rows(pd.DataFrame(test), loaded.spec.preprocessing))
        predicted = [loaded.spec.class_names[i] for i in out_.argmax(-1).tolist()]
        hits = [p == r["quality"] for p, r in zip(predicted, test)]
        repeats = [h for h, r in zip(hits, test) if key(r) in seen]
        return {"old": sum(hits) / len(hits), "new": sum(repeats) / max(len(repeats), 1)}

    recipe = ["+experiment=tabular", "data.target=quality", f"data.path={out / 'wine_known.csv'}"]
    seconds = trained(out / "before", *recipe)
    results = [{"model": "before (60 % of the rows)", **score(out / "before"), "seconds": seconds}]
    if not (out / "before" / "feedback").is_dir():
        store = FeedbackStore(out / "before")
        for i, r in enumerate(later):
            store.add(Feedback(f"wine-{i}", "tabular", {c: float(r[c]) for c in features}, r["quality"]))
        store.close()
    for name, extra in (("memory only (update.train=false)", ["update.train=false", "update.holdout=0"]),
                        ("update (default, remember)", []),
                        ("update (default, update.remember=false)", ["update.remember=false"])):
        seconds = updated(out / name, str(out / "before"), *extra)
        results.append({"model": name, **score(out / name), "seconds": seconds, **gate_of(out / name)})
    print(f"wine: {len(test)} test rows, {sum(key(r) in seen for r in test)} of them copy a feedback row", flush=True)
    return results


def questions(source: Path, target: Path, count: int | None) -> Path:
    """The first `count` questions of a TREC csv as a text, a question a line."""
    rows = list(csv.DictReader(open(source, newline="")))[:count]
    target.write_text("".join(r["text"] + "\n" for r in rows))
    return target


def text_loss(run_dir: Path, path: Path) -> float:
    """The run's loss per character on all of a text (`nettrain eval split=test`: consecutive blocks, as validation
    reads one), the characters its vocabulary lacks left out."""
    out = run_dir / "eval" / path.stem
    nettrain("eval", str(run_dir), "split=test", f"data.test_path={path}", "data.unknown_chars=skip", f"output={out}")
    return float(json.loads((out / "metrics.json").read_text())["loss"])


def text(data: Path, out: Path, steps: int, count: int) -> list[dict[str, Any]]:
    """A Shakespeare character model learns TREC's questions: the update against plain continued training."""
    shakespeare = data / "text" / "tinyshakespeare.txt"
    content = shakespeare.read_text()
    old_val = out / "shakespeare_val.txt"
    old_val.write_text(content[int(len(content) * 0.9):])  # the run's own validation text: its last 10 %
    new = questions(data / "text" / "trec_train.csv", out / "questions.txt", count)
    test = questions(data / "text" / "trec_test.csv", out / "questions_test.txt", None)

    def scored(name: str, seconds: float, **more: Any) -> dict[str, Any]:
        return {"model": name, "old": text_loss(out / name, old_val), "new": text_loss(out / name, test),
                "seconds": seconds, **more}

    before = "before (Shakespeare only)"
    results = [scored(before, trained(out / before, "+experiment=shakespeare_char_cpu", f"data.path={shakespeare}",
                                      f"trainer.max_steps={steps}"))]
    for name, extra in (("update (default: replay 8)", []), ("update (replay 8, distill 0.5)", ["update.distill=0.5"]),
                        ("update (replay 2, distill 0.5)", ["update.replay=2", "update.distill=0.5"]),
                        ("update (1 epoch, distill 0.5)", ["trainer.max_epochs=1", "update.distill=0.5"]),
                        ("continued training (replay 0)", ["update.replay=0", "update.distill=0"])):
        seconds = updated(out / name, str(out / before), f"data.path={new}", "data.unknown_chars=skip", *extra)
        results.append(scored(name, seconds, **gate_of(out / name)))
    return results


def table(title: str, results: list[dict[str, Any]], columns: tuple[str, str] = ("old classes", "new classes"),
          shown: str = "{:.1%}", unit: str = "points") -> str:
    lines = [f"### {title}", "", f"| model | {columns[0]} | {columns[1]} | seconds | gate |", "|---|---|---|---|---|"]
    for r in results:
        gate = f"{r['verdict']} (forgot {r['forgot']:.1f} {unit} on val)" if r.get("verdict") else r.get("status", "")
        lines.append(f"| {r['model']} | {shown.format(r['old'])} | {shown.format(r['new'])} | {r['seconds']:.0f} | {gate} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True,
                        help="the folder of the real data: text/ (trec_*.csv, tinyshakespeare.txt), mnist_png/, tabular/")
    parser.add_argument("--out", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--only", choices=("trec", "mnist", "wine", "text"), default=None)
    parser.add_argument("--trec-class", default="5", help="the coarse TREC class left out (0-5)")
    parser.add_argument("--mnist-classes", default="8,9", help="the digits left out")
    parser.add_argument("--lm-steps", type=int, default=1500, help="steps of the Shakespeare model before its update")
    parser.add_argument("--questions", type=int, default=2000, help="TREC training questions the language model learns")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_update_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    if args.only in (None, "trec"):
        (out / "trec").mkdir(exist_ok=True)
        report["trec"] = trec(data, out / "trec", args.trec_class)
        print(table(f"TREC coarse, class {args.trec_class} added by feedback (test: trec_test.csv)", report["trec"]),
              flush=True)
    if args.only in (None, "mnist"):
        (out / "mnist").mkdir(exist_ok=True)
        report["mnist"] = mnist(data, out / "mnist", args.mnist_classes.split(","))
        print(table(f"MNIST digits, {args.mnist_classes} added as new data (test: mnist_png/val)", report["mnist"]),
              flush=True)
    if args.only in (None, "wine"):
        (out / "wine").mkdir(exist_ok=True)
        report["wine"] = wine(data, out / "wine")
        print(table("White wine, model.memory=true, 20 % of the rows back as feedback (old: every test row; new: the "
                    "test rows that copy a feedback row)", report["wine"]), flush=True)
    if args.only in (None, "text"):
        (out / "text").mkdir(exist_ok=True)
        report["text"] = text(data, out / "text", args.lm_steps, args.questions)
        print(table(f"Shakespeare character model, {args.questions} TREC questions added as new text (loss per "
                    "character; old: Shakespeare's last 10 %, new: trec_test.csv's questions)", report["text"],
                    ("old text (nats/char)", "new text (nats/char)"), "{:.3f}", "percent"), flush=True)
    (out / "bench_update.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nruns and bench_update.json in {out}")


if __name__ == "__main__":
    main()
