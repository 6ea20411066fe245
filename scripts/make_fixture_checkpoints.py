"""Write the checkpoints kept as test fixtures (tests/fixtures/checkpoints/): runs trained by nettrain as it
was when the fixtures were made, so a later nettrain is tested on files it did not write itself
(tests/test_fixture_checkpoints.py: eval, predict, export and resume read them).

    python scripts/make_fixture_checkpoints.py        # from the repo root; overwrites the fixtures

Each run is small (a few hundred kB) and trained in seconds on the CPU: a digits MLP (image preprocessing)
and a table MLP with a memory of rows (tabular statistics, categorical columns, the memory's buffers).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "checkpoints"


def table(path: Path, rows: int = 120) -> Path:
    """A small table: two numbers, a category, and a class that depends on them."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=rows), rng.normal(size=rows)
    city = rng.choice(["oslo", "rome", "lima"], size=rows)
    label = np.where(a + (city == "rome") > 0.3, "high", "low")
    lines = ["a,b,city,label"] + [f"{x:.4f},{y:.4f},{c},{t}" for x, y, c, t in zip(a, b, city, label)]
    path.write_text("\n".join(lines) + "\n")
    return path


def train(name: str, *overrides: str) -> None:
    run_dir = OUT / name
    shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "nettrain", "train", f"hydra.run.dir={run_dir}", "trainer.seed=0",
                    "logger=csv", *overrides], cwd=OUT, check=True)
    for stale in (run_dir / "checkpoints").glob("epoch=*.pt"):  # best.pt and last.pt are what users keep
        stale.unlink()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train("digits_mlp", "model.hidden=[16]", "trainer.max_epochs=2", "checkpoint.save_top_k=0")
    csv = table(OUT / "table.csv")
    train("table_memory", "+experiment=tabular", f"data.path={csv}", "data.target=label", "data.categorical=[city]",
          "model.hidden=[16]", "trainer.max_epochs=2", "early_stopping.patience=null", "checkpoint.save_top_k=0")


if __name__ == "__main__":
    main()
