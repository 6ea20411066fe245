"""The GPU path, end to end: `pytest -m cuda` on a machine with a CUDA GPU.

Everything a user does on a GPU: train (bf16, fp16 with the scaler, fp32, channels-last, compile),
resume, eval reproducing the recorded validation metrics exactly, predict, export, a GPU-trained
checkpoint used on the CPU, and the GPU-resident augmentation drawing the CPU path's batches.

Without a GPU the same scenarios run on the CPU (those that only a GPU can show are skipped): tests
that never run rot, and two of these had, unseen, until they first met a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import metrics, run_in_process, train
from datagen import image_folder, machines_csv, mnist_files

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_gpu = pytest.mark.skipif(DEVICE == "cpu", reason="needs a CUDA GPU (run with pytest -m cuda)")
pytestmark = pytest.mark.cuda

MLP = [f"trainer.device={DEVICE}", "trainer.log_every_n_steps=5"]


def _eval(ckpt: Path, out: Path, *args: str) -> dict:
    assert run_in_process("eval", f"ckpt={ckpt}", f"output={out}", *args) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cuda")
    return train(tmp, *MLP, "trainer.max_epochs=3")


def test_train_eval_predict_export_round_trip_on_cuda(cuda_run, tmp_path):
    record = metrics(cuda_run)
    assert record["status"] == "completed" and record["best"]["val_accuracy"] > 0.85
    result = _eval(cuda_run / "checkpoints" / "best.pt", tmp_path / "eval", f"device={DEVICE}")
    assert result["loss"] == pytest.approx(record["best"]["val_loss"], rel=1e-6)  # same kernels, batches, precision
    assert result["accuracy"] == record["best"]["val_accuracy"]
    digit = tmp_path / "digit.png"  # the digits are 8x8 grayscale images
    Image.new("L", (8, 8), 128).save(digit)
    assert run_in_process("predict", f"ckpt={cuda_run}", f"input={digit}", f"device={DEVICE}") == 0
    assert run_in_process("export", f"ckpt={cuda_run}", f"output={tmp_path / 'm.onnx'}") == 0


def test_a_checkpoint_trained_on_cuda_serves_on_the_cpu(cuda_run, tmp_path):
    on_gpu = _eval(cuda_run, tmp_path / "gpu", f"device={DEVICE}")
    on_cpu = _eval(cuda_run, tmp_path / "cpu", "device=cpu")
    assert on_cpu["accuracy"] == pytest.approx(on_gpu["accuracy"], abs=0.01)  # bf16 on the GPU, fp32 here
    assert run_in_process("export", f"ckpt={cuda_run}", f"output={tmp_path / 'cpu.onnx'}") == 0


def test_resume_on_cuda_ends_where_an_uninterrupted_run_ends(tmp_path, cuda_run):
    run_dir = train(tmp_path, *MLP, "trainer.max_epochs=2")
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=3") == 0
    ours = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(cuda_run / "checkpoints" / "last.pt", weights_only=True)["model"]
    # cuBLAS picks the same kernels for the same shapes, so the run replays bit for bit.
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("precision", [pytest.param("16", marks=needs_gpu), "bf16", "32"])
def test_every_precision_trains_on_cuda(tmp_path, precision):
    run_dir = train(tmp_path, *MLP, "trainer.max_epochs=2", f"trainer.precision={precision}")
    assert metrics(run_dir)["best"]["val_accuracy"] > 0.8


@pytest.mark.parametrize("compile_", [False, pytest.param(True, marks=needs_gpu),  # compiling takes minutes on 2 cores
                                      pytest.param("reduce-overhead", marks=needs_gpu)])
def test_a_channels_last_convnet_trains_and_compiles_on_cuda(tmp_path, compile_):
    root = mnist_files(tmp_path / "mnist", train=600)
    run_dir = train(tmp_path, *MLP, "model=cnn", "data=mnist", f"data.root={root}", "trainer.max_epochs=2",
                    f"trainer.compile={str(compile_).lower()}")
    assert metrics(run_dir)["status"] == "completed"
    result = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "eval", f"device={DEVICE}")
    assert result["loss"] == pytest.approx(metrics(run_dir)["best"]["val_loss"], rel=1e-5)


def test_regression_eval_reproduces_the_recorded_rmse_on_cuda(tmp_path):
    path = machines_csv(tmp_path / "m.csv", rows=400)
    run_dir = train(tmp_path, *MLP, "data=csv", f"data.path={path}", "data.target=wear", "data.drop=[id]",
                    "data.categorical=[model]",
                    "loss=mse", "data.task=regression", "trainer.max_epochs=3", "early_stopping.monitor=val_rmse",
                    "trainer.precision=bf16")  # the GPU's default: once rounded the targets to 3 digits
    result = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "eval", f"device={DEVICE}")
    assert result["rmse"] == pytest.approx(metrics(run_dir)["best"]["val_rmse"], rel=1e-6)


@needs_gpu
def test_gpu_resident_augmentation_draws_the_cpu_paths_batches():
    from nettrain.data.augment import image_batch_transform

    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    for policy in ("standard", "crop", "flip"):
        transform = image_batch_transform([0.5] * 3, [0.25] * 3, policy, seed=3)
        on_cpu = transform(x, 2, 5)
        on_gpu = transform(x.cuda(), 2, 5).cpu()
        assert torch.allclose(on_cpu, on_gpu, atol=1e-4), policy


def test_an_image_folder_trains_cached_and_resident_on_cuda(tmp_path):
    root = image_folder(tmp_path / "photos", per_class=16)
    run_dir = train(tmp_path, *MLP, "data=imagefolder", f"data.root={root}", "data.cache=true", "data.image_size=32",
                    "model=resnet18", "trainer.max_epochs=2")
    assert metrics(run_dir)["status"] == "completed"


def test_a_transformer_classifies_text_on_cuda_and_eval_reproduces_it(tmp_path):
    from test_text import TINY, text_args, texts_csv

    run_dir = train(tmp_path, *text_args(texts_csv(tmp_path / "texts.csv")), "model=transformer", *TINY, *MLP,
                    "trainer.max_epochs=3")
    best = metrics(run_dir)["best"]
    result = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "eval", f"device={DEVICE}")
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-6) and result["accuracy"] == best["val_accuracy"]
    assert run_in_process("predict", f"ckpt={run_dir}", "text=my card was swallowed", f"device={DEVICE}") == 0


def test_a_threshold_tuned_on_cuda_is_the_one_eval_decides_with(tmp_path):
    from test_decision import table

    run_dir = train(tmp_path, "data=csv", f"data.path={table(tmp_path / 'machines.csv')}", "data.target=state",
                    "data.batch_size=16", "trainer.max_epochs=3", "early_stopping.monitor=val_f1", *MLP)
    best = metrics(run_dir)["best"]
    result = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "eval", f"device={DEVICE}")
    assert result["threshold"] == best["val_threshold"] and result["f1"] == best["val_f1"]


def test_a_memory_of_rows_recalls_them_on_cuda_and_its_checkpoint_on_the_cpu(tmp_path):
    # Under the GPU's defaults (bf16, TF32 matmuls) the rows live on the device with the model; eval there
    # reproduces validation, and the CPU recalls what the GPU learned.
    from datagen import repeated_rows

    run_dir = train(tmp_path, *MLP, "data=csv", f"data.path={repeated_rows(tmp_path / 'rows.csv')}",
                    "data.target=target", "model.memory=true", "trainer.max_epochs=3", "trainer.precision=bf16")
    best = metrics(run_dir)["best"]
    assert best["val_accuracy"] >= 0.95
    on_gpu = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "gpu", f"device={DEVICE}")
    assert on_gpu["loss"] == pytest.approx(best["val_loss"], rel=1e-6) and on_gpu["accuracy"] == best["val_accuracy"]
    assert _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "cpu", "device=cpu")["accuracy"] == best["val_accuracy"]


@pytest.mark.parametrize("setting, mode", [("true", "default"), ("reduce-overhead", "reduce-overhead")])
def test_trainer_compile_hands_torch_its_mode(tmp_path, monkeypatch, setting, mode):
    """What a GPU runs (CUDA graphs for small models), as far as the CPU can tell: the training model is
    compiled in the mode asked for, and only it (validation and checkpoints read the plain module)."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    run_dir = train(tmp_path, *MLP, "trainer.max_epochs=1", f"trainer.compile={setting}")
    assert modes == [mode] and metrics(run_dir)["status"] == "completed"
