"""Device and precision set-up, checked on a CPU-only machine against a stand-in for torch.cuda
that refuses what the real one refuses (an index-less device), as every GPU does."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from nettrain import runtime


@pytest.fixture
def fake_cuda(monkeypatch):
    """Two 'GPUs': torch.cuda answers as on a real machine and records the devices it is handed."""
    calls: list[torch.device] = []

    def set_device(device):
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        calls.append(torch.device("cuda", device) if isinstance(device, int) else device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    monkeypatch.setattr(runtime, "seed_everything", lambda seed: None)  # seeding is not what is tested
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    benchmark, matmul = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    yield calls
    torch.backends.cudnn.benchmark = benchmark
    torch.set_float32_matmul_precision(matmul)


def trainer(device: str, precision: str = "auto"):
    return OmegaConf.create({"device": device, "precision": precision, "threads": None, "seed": 0,
                             "channels_last": True})


@pytest.mark.parametrize("device, expected", [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_cuda_setup_hands_torch_an_indexed_device(fake_cuda, device, expected):
    rt = runtime.setup(trainer(device))
    assert fake_cuda == [torch.device(expected)]
    assert rt.device == torch.device(expected)
    assert rt.amp_dtype == torch.bfloat16  # precision=auto on a bf16-capable GPU
    assert torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "high"


@pytest.mark.parametrize("local_rank", [0, 1])
def test_each_data_parallel_rank_takes_the_gpu_of_its_local_rank(fake_cuda, monkeypatch, local_rank):
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    rt = runtime.setup(trainer("cuda"))
    assert fake_cuda == [torch.device("cuda", local_rank)]
    assert (rt.rank, rt.world_size, rt.device) == (local_rank, 2, torch.device("cuda", local_rank))


def test_fp16_is_refused_on_the_cpu_in_one_line():
    with pytest.raises(Exception, match="fp16 needs a CUDA GPU"):
        runtime.resolve_precision(16, torch.device("cpu"))


def test_inference_loads_onto_an_indexed_gpu(fake_cuda, monkeypatch, digits_run):
    from nettrain.inference import load as inference

    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: moved.append(a[0]) or self)
    loaded = inference.load_model(digits_run, device="cuda")
    assert loaded.device == torch.device("cuda", 0) and moved == [torch.device("cuda", 0)]


def test_threads_do_not_depend_on_what_else_the_machine_runs(monkeypatch):
    """The thread count changes how the CPU adds numbers up: the same config must compute alike on a busy machine."""
    conv = torch.nn.Conv2d(3, 8, 3)
    conv.convolutional = True
    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    for busy in (0.1, 1.2, 1.9):
        monkeypatch.setattr(runtime, "busy_cores", lambda window=0.1, busy=busy: busy)
        monkeypatch.setattr(runtime.os, "getloadavg", lambda busy=busy: (busy, busy, busy))
        assert runtime.choose_threads(conv, 32) == (2, "2 core(s)")
    assert runtime.choose_threads(torch.nn.Linear(64, 10), 64)[0] == 1  # a small model: one thread
    monkeypatch.undo()
    assert 0.0 <= runtime.busy_cores(0.05) <= (os.cpu_count() or 1)


def test_a_resumed_run_computes_on_the_threads_its_checkpoint_recorded(tmp_path, monkeypatch):
    from conftest import metrics, run_in_process

    monkeypatch.setattr(runtime, "available_cores", lambda: 2)
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "model=cnn", "model.channels=[4]",
                          "trainer.max_epochs=1") == 0
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["trainer"]["threads"] == 2 and metrics(run_dir)["run"]["threads"] == 2
    monkeypatch.setattr(runtime, "available_cores", lambda: 1)  # resumed where fewer cores are offered
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 0
    assert metrics(run_dir)["run"]["threads"] == 2
