"""The language-model recipes measured on a real text: train one (`nettrain train +experiment=...`), then print its
validation curve (loss in nats per character, bits per character, at each validation, with the training time so
far), when it first reached a target loss, its steps/s and tokens/s, and a text it writes (`nettrain generate`).

    .venv/bin/python scripts/bench_lm.py --data DIR/tinyshakespeare.txt
    .venv/bin/python scripts/bench_lm.py --data ... --experiment shakespeare_char --target 1.5   # on a GPU
    .venv/bin/python scripts/bench_lm.py --data ... --run outputs/...   # the table of a run trained before

Time is the run's training time: the sum of its epochs' seconds (steps and validations; not the start-up of the
process or the data's encoding, which "in all" adds). On a machine other work shares it says little (the run's
CPU time, printed too, says more); the steps and the losses do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def train(experiment: str, data: str, run_dir: Path, overrides: list[str]) -> float:
    """Train the recipe; returns the CPU seconds the run took (user + system, its threads together)."""
    command = [sys.executable, "-m", "nettrain", "train", f"+experiment={experiment}", f"data.path={data}",
               f"hydra.run.dir={run_dir}", *overrides]
    print("$", " ".join(command[1:]), file=sys.stderr)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def sample(run_dir: Path, prompt: str, tokens: int) -> str:
    return subprocess.run([sys.executable, "-m", "nettrain", "generate", str(run_dir), f"prompt={prompt}",
                           f"max_new_tokens={tokens}", "temperature=0.8", "top_k=200", "seed=0"],
                          check=True, capture_output=True, text=True).stdout


def table(record: dict[str, Any], target: float) -> list[str]:
    run = record["run"]
    lines = [f"{run['model']['name']}: {run['model']['parameters']:,} parameters on {run['device_name']} "
             f"({run['threads']} threads, precision {run['precision']}), batch {run['batch_size']} x "
             f"{run['data']['input_shape'][0]} tokens",
             f"{'epoch':>5} {'step':>6} {'seconds':>8} {'val loss':>9} {'val bpc':>8} {'train loss':>11}"]
    elapsed, reached = 0.0, None
    for r in record["history"]:
        elapsed += r["seconds"]
        lines.append(f"{r['epoch']:>5} {r['step']:>6} {elapsed:>8.0f} {r['val_loss']:>9.4f} "
                     f"{r.get('val_bpc', float('nan')):>8.3f} {r['train_loss']:>11.4f}")
        if reached is None and r["val_loss"] <= target:
            reached = (r["step"], elapsed)
    steps = record["history"][-1]["step"]
    rates = [r["train_tokens_per_sec"] for r in record["history"]]
    lines += [f"best val loss {record['best']['val_loss']:.4f} nats/char"
              + (f" ({record['best']['val_bpc']:.3f} bpc)" if "val_bpc" in record["best"] else "")
              + f" at epoch {record['best_epoch']}",
              f"{steps:,} steps in {elapsed:.0f} s of training ({steps / elapsed:.2f} steps/s, median "
              f"{sorted(rates)[len(rates) // 2]:,.0f} training tokens/s; {record['total_seconds']:.0f} s in all)",
              f"val loss <= {target}: " + (f"first at step {reached[0]:,}, after {reached[1]:.0f} s" if reached
                                          else "not reached")]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the text file (tiny shakespeare)")
    parser.add_argument("--experiment", default="shakespeare_char_cpu")
    parser.add_argument("--target", type=float, default=1.90, help="the validation loss (nats/char) to reach")
    parser.add_argument("--run", help="a run dir trained before: only print its table and a sample")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--tokens", type=int, default=400, help="characters of the sample")
    parser.add_argument("overrides", nargs="*", help="more train overrides, e.g. trainer.threads=1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nettrain-lm-") as tmp:
        run_dir = Path(args.run) if args.run else Path(tmp) / "run"
        cpu = None if args.run else train(args.experiment, args.data, run_dir, args.overrides)
        record = json.loads((run_dir / "metrics.json").read_text())
        print("\n".join(table(record, args.target)))
        if cpu is not None:  # on a shared machine, nearer an idle machine's wall clock than the wall clock is
            print(f"CPU time of the run: {cpu:.0f} s ({record['run']['threads']} thread(s))")
        print(f"\nnettrain generate RUN prompt={args.prompt!r} max_new_tokens={args.tokens} (seed 0):\n")
        print(sample(run_dir, args.prompt, args.tokens))


if __name__ == "__main__":
    main()
