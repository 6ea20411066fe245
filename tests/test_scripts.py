"""The measuring scripts run as their docstrings show them: they are how a recipe is judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).parents[1] / "scripts"


def test_quality_scores_the_tabular_recipe_on_an_ai4i_like_table(tmp_path):
    table = tmp_path / "ai4i_like.csv"
    subprocess.run([sys.executable, SCRIPTS / "make_ai4i_like.py", table, "--rows", "600"], check=True,
                   capture_output=True)
    proc = subprocess.run([sys.executable, SCRIPTS / "quality.py", "--json", "--out", tmp_path / "runs",
                           "--csv", f"{table}:Machine failure:UDI,Product ID,TWF,HDF,PWF,OSF,RNF:Type",
                           "--set", "trainer.max_epochs=2", "--set", "trainer.seed=1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads(proc.stdout)
    assert result["status"] == "completed" and result["epochs"] == 2
    assert 0 <= result["f1"] <= 1 and 0 <= result["reference"]["f1"] <= 1  # the failures' F1, ours and the forest's
    assert result["reference"]["split"] == "trainer.seed=1, data.val_fraction=0.2"  # the forest on the run's own split
