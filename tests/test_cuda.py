"""The GPU path, end to end: `pytest -m cuda` on a machine with a CUDA GPU (skipped elsewhere).

Everything a user does on a GPU: train (bf16, fp16 with the scaler, fp32, channels-last, compile),
resume, eval reproducing the recorded validation metrics exactly, predict, export, a GPU-trained
checkpoint used on the CPU, and the GPU-resident augmentation drawing the CPU path's batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import metrics, run_in_process, train
from datagen import image_folder, machines_csv, mnist_files

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with pytest -m cuda)")]

MLP = ["trainer.device=cuda", "trainer.log_every_n_steps=5"]


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
    result = _eval(cuda_run / "checkpoints" / "best.pt", tmp_path / "eval", "device=cuda")
    assert result["loss"] == pytest.approx(record["best"]["val_loss"], rel=1e-6)  # same kernels, batches, precision
    assert result["accuracy"] == record["best"]["val_accuracy"]
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(f"x{i}" for i in range(64)) + "\n" + ",".join("0" for _ in range(64)) + "\n")
    assert run_in_process("predict", f"ckpt={cuda_run}", f"input={rows}", "device=cuda") == 0
    assert run_in_process("export", f"ckpt={cuda_run}", f"output={tmp_path / 'm.onnx'}") == 0


def test_a_checkpoint_trained_on_cuda_serves_on_the_cpu(cuda_run, tmp_path):
    on_gpu = _eval(cuda_run, tmp_path / "gpu", "device=cuda")
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


@pytest.mark.parametrize("precision", ["16", "bf16", "32"])
def test_every_precision_trains_on_cuda(tmp_path, precision):
    run_dir = train(tmp_path, *MLP, "trainer.max_epochs=2", f"trainer.precision={precision}")
    assert metrics(run_dir)["best"]["val_accuracy"] > 0.8


@pytest.mark.parametrize("compile_", [False, True])
def test_a_channels_last_convnet_trains_and_compiles_on_cuda(tmp_path, compile_):
    root = mnist_files(tmp_path / "mnist", train=600)
    run_dir = train(tmp_path, *MLP, "model=cnn", "data=mnist", f"data.root={root}", "trainer.max_epochs=2",
                    f"trainer.compile={str(compile_).lower()}")
    assert metrics(run_dir)["status"] == "completed"
    result = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "eval", "device=cuda")
    assert result["loss"] == pytest.approx(metrics(run_dir)["best"]["val_loss"], rel=1e-5)


def test_regression_eval_reproduces_the_recorded_rmse_on_cuda(tmp_path):
    path = machines_csv(tmp_path / "m.csv", rows=400)
    run_dir = train(tmp_path, *MLP, "data=csv", f"data.path={path}", "data.target=wear", "data.drop=[id]",
                    "loss=mse", "data.task=regression", "trainer.max_epochs=3", "early_stopping.monitor=val_rmse")
    result = _eval(run_dir / "checkpoints" / "best.pt", tmp_path / "eval", "device=cuda")
    assert result["rmse"] == pytest.approx(metrics(run_dir)["best"]["val_rmse"], rel=1e-6)


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
