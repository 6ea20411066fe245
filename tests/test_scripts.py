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


def test_gpu_check_unpacks_cifar_and_runs_a_recipe_with_its_evals_here_on_the_cpu(tmp_path, monkeypatch):
    """What only a lent GPU runs whole (scripts/gpu_check.py), checked here on tiny data: the npz unpacked into
    an image folder, a recipe trained on it, eval reproducing val, and test accuracy when there is a test split."""
    import io

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(SCRIPTS))
    import gpu_check

    rng = np.random.default_rng(0)
    blobs, labels = [], []
    for k in range(10):
        for _ in range(12):
            buffer = io.BytesIO()
            Image.fromarray((rng.integers(0, 40, (32, 32, 3)) + k * 20).astype(np.uint8)).save(buffer, "JPEG")
            blobs.append(np.frombuffer(buffer.getvalue(), np.uint8))
            labels.append(k)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    np.savez(tmp_path / "c.npz", jpeg=np.concatenate(blobs), offsets=offsets, labels=np.array(labels),
             classes=np.array([f"c{k}" for k in range(10)]))
    folder = gpu_check.unpack_npz(tmp_path / "c.npz", tmp_path / "cifar", val_per_class=3)
    assert len(list((folder / "train" / "c0").iterdir())) == 9 and len(list((folder / "val" / "c0").iterdir())) == 3
    (folder / "test").symlink_to(folder / "val")  # the official test set, where a user has it
    monkeypatch.chdir(tmp_path)
    tiny = ["trainer.device=cpu", "model.channels=[4,4,8,8]", "trainer.max_epochs=1", "data.batch_size=16",
            "trainer.precision=32"]
    part = gpu_check.cifar_part("cifar10_fast", (0,), ["data=imagefolder", f"data.root={folder}", "data.cache=true"],
                                tmp_path, tiny)
    (run,) = part["runs"]
    assert part["ok"] and run["eval_reproduces_val"] and run["epochs"] == 1
    assert 0 <= run["val_accuracy"] <= 1 and 0 <= run["test_accuracy"] <= 1 and "test" in part["result"]


def test_gpu_check_trains_the_language_model_recipe_and_reports_its_curve_here_on_the_cpu(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPTS))
    sys.path.insert(0, str(Path(__file__).parent))
    import gpu_check

    import datagen

    monkeypatch.chdir(tmp_path)
    text = datagen.sentences(tmp_path / "t.txt", lines=800)
    tiny = ["trainer.device=cpu", "trainer.precision=32", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
            "data.block_size=16", "data.batch_size=8", "data.batches_per_epoch=10", "trainer.max_steps=30",
            "model.samples=0"]
    part = gpu_check.shakespeare(tmp_path, text, tiny)
    assert [c["step"] for c in part["curve"]] == [10, 20, 30]
    assert part["curve"][0]["seconds"] < part["curve"][-1]["seconds"] and part["curve"][-1]["val_loss"] > 1.47
    assert not part["ok"] and "never <= 1.47" in part["result"]  # a 1-layer model in 30 steps: far from it


def test_bench_lm_trains_a_recipe_and_prints_its_curve_and_a_sample(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import datagen

    text = datagen.sentences(tmp_path / "t.txt", lines=800)
    tiny = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "data.block_size=16", "data.batch_size=8",
            "data.batches_per_epoch=10", "trainer.max_steps=30", "trainer.threads=1"]
    proc = subprocess.run([sys.executable, SCRIPTS / "bench_lm.py", "--data", text, "--target", "3.0", "--prompt", "the",
                           "--tokens", "20", *tiny], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("gpt: ") and lines[1].split() == ["epoch", "step", "seconds", "val", "loss", "val", "bpc",
                                                                 "train", "loss"]
    assert [line.split()[1] for line in lines[2:5]] == ["10", "20", "30"]
    assert any(line.startswith("val loss <= 3.0: first at step") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("nettrain generate RUN prompt='the'"))
    assert lines[header + 2].startswith("the")  # the sample, after a blank line
