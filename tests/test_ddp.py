"""Data-parallel training (DDP) on the CPU: gloo, 2 worker processes, digits, as the docs show it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import TensorDataset

from conftest import metrics, nettrain, run_in_process, train
from datagen import repeated_rows
from nettrain.data.loaders import StreamLoader, TensorLoader, batch_plan
from nettrain.data.spec import DataSpec
from nettrain.models.build import build_model
from nettrain.training.launch import cluster, first_host

# Dropout off: each rank draws its own masks, which cannot equal a single process's.
RUN = ["trainer.max_epochs=3", "model.dropout=0"]
COMPARED = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The reference: one process with the global batch of 2 ranks x 32."""
    run_dir = train(tmp_path_factory.mktemp("one"), *RUN, "data.batch_size=64")
    return metrics(run_dir)["history"]


def assert_same_epochs(history: list[dict], reference: list[dict]) -> None:
    assert [h["epoch"] for h in history] == [r["epoch"] for r in reference]
    for h, r in zip(history, reference):
        assert {k: h[k] for k in COMPARED} == pytest.approx({k: r[k] for k in COMPARED}, rel=1e-4, abs=1e-6)


def run_dirs(tmp_path) -> list:
    return [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]


def test_two_processes_match_one_process_through_a_resume(tmp_path, one_process, capfd):
    assert run_in_process("train", "trainer.devices=2", "data.batch_size=32", *RUN, "trainer.max_epochs=2") == 0
    (run_dir,) = run_dirs(tmp_path)
    assert capfd.readouterr().err.count("epoch 1/2") == 1  # only rank 0 logs
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=3") == 0
    assert run_dirs(tmp_path) == [run_dir]
    m = metrics(run_dir)
    assert m["status"] == "completed" and m["epochs"] == 3
    assert_same_epochs(m["history"], one_process)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == \
        ["best.pt", f"epoch=003-val_loss={m['history'][-1]['val_loss']:.4f}.pt", "last.pt"]
    # The checkpoint loads into a plain single-process model: no DDP `module.` prefixes.
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    build_model(OmegaConf.create(ckpt["config"]["model"]), DataSpec.from_dict(ckpt["spec"])).load_state_dict(ckpt["model"])


def test_a_table_with_memory_trains_on_two_processes_as_on_one(tmp_path):
    # Each rank trains on its share of the rows, and remembers them all.
    args = ["data=csv", f"data.path={repeated_rows(tmp_path / 'rows.csv')}", "data.target=target", "model.memory=true",
            *RUN]
    one = train(tmp_path, *args, "data.batch_size=64", name="one")
    two = train(tmp_path, *args, "trainer.devices=2", "data.batch_size=32", name="two")
    assert_same_epochs(metrics(two)["history"], metrics(one)["history"])
    assert metrics(two)["best"]["val_accuracy"] >= 0.95


def test_ranks_draw_their_own_dropout_masks_and_resume_them_exactly(tmp_path):
    whole, halted = tmp_path / "whole", tmp_path / "halted"
    assert run_in_process("train", f"hydra.run.dir={whole}", "trainer.devices=2", "model.dropout=0.3",
                          "data.batch_size=32", "trainer.max_epochs=3", "checkpoint.save_top_k=3") == 0
    # As if killed right after epoch 2's checkpoint (one DDP launch fewer than training 2 epochs anew):
    # an epoch's checkpoint holds what last.pt then held.
    shutil.copytree(whole, halted)
    (epoch_2,) = (halted / "checkpoints").glob("epoch=002-*.pt")
    for name in ("last.pt", "best.pt"):
        shutil.copyfile(epoch_2, halted / "checkpoints" / name)
    for stale in [*(halted / "checkpoints").glob("epoch=003-*.pt"), halted / "metrics.json"]:
        stale.unlink()
    rngs = torch.load(halted / "checkpoints" / "last.pt", weights_only=True)["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])

    assert run_in_process("train", f"resume={halted}", "trainer.max_epochs=3") == 0
    ours = torch.load(halted / "checkpoints" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(whole / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_failing_worker_ends_the_job_with_its_error(tmp_path):
    proc = nettrain("train", "trainer.devices=2", check=False, timeout=120, cwd=tmp_path,
                    env={"NETTRAIN_TEST_FAIL_RANK": "1"})
    assert proc.returncode == 1
    assert "rank 1 failed (exit code 1): RuntimeError: NETTRAIN_TEST_FAIL_RANK=1: rank 1 fails on purpose" \
        in proc.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert metrics(run_dir)["status"] == "failed"
    assert not (run_dir / "checkpoints").exists()


def test_a_bad_value_met_in_the_workers_is_one_line(tmp_path, capfd):
    assert run_in_process("train", "trainer.devices=2", "trainer.precision=16") == 2
    err = capfd.readouterr().err
    assert err.strip().splitlines()[-1] == \
        "nettrain: invalid trainer.precision=16: fp16 needs a CUDA GPU, the device is cpu; use 32 or bf16"
    assert "Traceback" not in err
    assert not run_dirs(tmp_path)


def test_ranks_agree_on_divergence_and_stop_together(tmp_path, capfd):
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.devices=2", "optimizer.lr=10") == 1
    assert "training diverged: loss=" in capfd.readouterr().err
    assert metrics(run_dir)["status"] == "diverged"


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_each_rank_takes_its_share_of_every_batch(train):
    """The ranks' batch k together is the single-process batch k of twice the size, with both loaders:
    shuffled full batches for training, every sample exactly once for evaluation."""
    x, y = torch.arange(103.0).unsqueeze(1), torch.arange(103)
    options = {"shuffle": train, "drop_last": train, "seed": 3}
    single = [sorted(batch.tolist()) for batch in batch_plan(103, 16, epoch=2, **options)]
    for make in (lambda rank: TensorLoader(x, y, batch_size=8, rank=rank, world_size=2, **options),
                 lambda rank: StreamLoader(TensorDataset(x, y), batch_size=8, rank=rank, world_size=2, **options)):
        ranks = [[labels.tolist() for _, labels in make(rank).batches(2)] for rank in (0, 1)]
        assert len(ranks[0]) == len(ranks[1])  # no rank waits in a collective for another
        assert [sorted(a + b) for a, b in zip(*ranks)] == single
    assert sum(map(len, single)) == (96 if train else 103)


def test_torchrun_runs_one_job_and_its_ranks_stop_early_together(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "nettrain",
         "train", "trainer.max_epochs=5", "early_stopping.monitor=val_accuracy", "early_stopping.patience=1",
         "early_stopping.min_delta=1.0"],  # accuracy can never improve by 1.0: stop after epoch 2
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = run_dirs(tmp_path)
    m = metrics(run_dir)
    assert m["status"] == "stopped_early" and m["epochs"] == 2
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert proc.stderr.count("epoch 1/5") == 1


def test_bad_data_parallel_settings_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    if not torch.cuda.is_available():
        assert run_in_process("train", "trainer.devices=2", "trainer.device=cuda") == 2
        assert "invalid trainer.device='cuda': no CUDA GPU is available here" in capsys.readouterr().err
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "2")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    assert run_in_process("train", "trainer.devices=2") == 2
    assert "this SLURM step runs 16 tasks on 2 nodes; nettrain needs one task per node" in capsys.readouterr().err
    # As torchrun's rank 0: the processes are torchrun's, and it runs one job, not a sweep.
    monkeypatch.delenv("SLURM_STEP_NUM_NODES")
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    assert run_in_process("train", "trainer.devices=2") == 2
    assert "invalid trainer.devices=2: under torchrun the processes are torchrun's" in capsys.readouterr().err
    assert run_in_process("train", "-m", "optimizer.lr=0.1,0.01") == 2
    assert "-m/--multirun under torchrun is not supported" in capsys.readouterr().err
    assert not run_dirs(tmp_path)


def test_two_slurm_node_tasks_train_as_one_job(tmp_path, one_process):
    """What hydra/launcher=slurm_ddp runs on each of 2 nodes, both played by this machine."""
    env = {**os.environ, "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_ID": "0",
           "SLURM_JOB_ID": str(os.getpid()), "SLURM_STEP_NODELIST": "localhost"}
    # One epoch by a step budget: every rank on both nodes must plan the same epochs, or a collective waits forever.
    command = [sys.executable, "-m", "nettrain", "train", f"hydra.run.dir={tmp_path / 'run'}", "data.batch_size=32",
               *RUN, "trainer.max_steps=1"]
    nodes = [subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [node.communicate(timeout=180)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], errors
    assert all("data-parallel: 1 worker process(es) x 2 node(s), global batch 64" in e for e in errors)
    assert_same_epochs(metrics(tmp_path / "run")["history"], one_process[:1])


def test_a_multi_node_slurm_step_meets_on_its_first_node():
    env = {"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "4242",
           "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "gpu[07-08]"}
    assert cluster(env) == (2, "gpu07:29742", "slurm-4242-0")
    assert cluster({})[:2] == (1, "localhost:0")
    assert first_host("gpu[07-09,12],cpu1") == "gpu07"
    assert first_host("node3,node4") == "node3"


def test_ctrl_c_stops_a_data_parallel_run_within_the_epoch(tmp_path):
    import json
    import signal
    import time

    run_dir = tmp_path / "run"
    # Epochs of 179 steps a rank, none of them a log step: the ranks must agree to stop without waiting for one.
    proc = subprocess.Popen([sys.executable, "-m", "nettrain", "train", "trainer.devices=2", "data.batch_size=4",
                             "trainer.max_epochs=5", "trainer.log_every_n_steps=1000",
                             f"hydra.run.dir={run_dir}"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((run_dir / "metrics.json").read_text())["epochs"] >= 1:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the launcher and every worker
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    progress = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["progress"]
    # Saved inside epoch 2 (batch 0: the signal came before its first step, as epoch 1 ended), never after it.
    assert progress["epoch"] == 1 and progress["batch"] < 179, progress
    assert metrics(run_dir)["status"] == "interrupted"
