"""Sweeps (`nettrain train -m`), as the README shows them: every job runs, failures are recorded,
the summary ranks the jobs, TensorBoard compares them, and a re-run resumes the sweep."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import metrics, run_in_process

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=3"]


def summary(sweep: Path) -> list[dict[str, str]]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((d for d in sweep.iterdir() if (d / ".hydra").is_dir()), key=lambda d: int(d.name.split("_")[0]))


def session_hparams(run_dir: Path) -> dict[str, object]:
    """The hyperparameters TensorBoard's HParams tab shows for a run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = EventAccumulator(str(run_dir)).Reload().PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return {k: v.string_value or v.number_value for k, v in start.hparams.items()}


def test_six_job_sweep_with_a_diverging_job_completes_the_others(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    code = run_in_process("train", "-m", "optimizer.lr=1e-3,3e-3,1e-2,3e-2,1e-1,1e30", *TINY, f"hydra.sweep.dir={sweep}")

    assert code == 1  # a job failed
    jobs = job_dirs(sweep)
    assert len(jobs) == 6 and len({j.name for j in jobs}) == 6
    statuses = {j.name.split("_")[0]: metrics(j)["status"] for j in jobs}
    assert statuses == {"0": "completed", "1": "completed", "2": "completed", "3": "completed", "4": "completed",
                        "5": "diverged"}
    assert "learning rate is probably too high" in metrics(jobs[5])["error"]

    rows = summary(sweep)
    assert len(rows) == 6
    assert [r["status"] for r in rows].count("completed") == 5
    losses = [float(r["val_loss"]) for r in rows if r["status"] == "completed"]
    assert losses == sorted(losses)  # best val_loss (the monitored metric) first
    assert rows[-1]["status"] == "diverged" and rows[-1]["val_loss"] == "" and "diverged" in rows[-1]["error"]
    assert rows[0]["overrides"].startswith("optimizer.lr=") and rows[0]["best_epoch"] == "1"
    for row, job in ((r, sweep / r["job"]) for r in rows if r["status"] == "completed"):
        epochs = sum(h["seconds"] for h in metrics(job)["history"])
        assert float(row["seconds"]) >= round(epochs, 1) and float(row["seconds"]) == round(metrics(job)["total_seconds"], 1)
    err = capsys.readouterr().err
    assert "6 jobs, best val_loss first" in err and "job 5 diverged: training diverged" in err
    assert f"tensorboard --logdir {sweep}" in err and "resume" not in err  # a diverged job would diverge again

    # TensorBoard: every job (a run named by its overrides) has its choices for the HParams tab: the
    # config groups and the overrides, not every default.
    for job in jobs:
        assert re.fullmatch(r"\d_optimizer\.lr=[0-9.e+-]+", job.name)  # named by the value it sweeps, the rest is shared
        hparams = session_hparams(job)
        assert hparams["optimizer.lr"] == pytest.approx(float(job.name.split("=")[1].split(",")[0]))
        assert hparams["model"] == "mlp" and "trainer.log_every_n_steps" not in hparams
        assert not any(k.endswith("_partial_") for k in hparams)


def test_a_job_with_a_bad_value_fails_alone(tmp_path):
    sweep = tmp_path / "sweep"
    code = run_in_process("train", "-m", "model=mlp,cnn", "optimizer.lr=1e-3,-1", *TINY, f"hydra.sweep.dir={sweep}")

    assert code == 2  # a bad value is a user error
    rows = {r["overrides"].split(" trainer")[0]: r for r in summary(sweep)}
    assert rows["model=mlp optimizer.lr=0.001"]["status"] == rows["model=cnn optimizer.lr=0.001"]["status"] == "completed"
    for model in ("mlp", "cnn"):
        failed = rows[f"model={model} optimizer.lr=-1"]
        assert failed["status"] == "failed"
        assert failed["error"] == "invalid optimizer.lr=-1: must be a number > 0"


def test_summary_reads_the_jobs_so_any_launcher_gets_the_exit_code(tmp_path):
    """Jobs a parallel launcher ran in other processes set no exit code here: the summary does."""
    from nettrain.commands.sweep_summary import SweepSummary

    sweep = tmp_path / "sweep"
    jobs = {"0_lr=0.1": {"status": "completed", "epochs": 2, "best_epoch": 2, "best": {"val_loss": 0.5, "val_accuracy": 0.8}},
            "1_lr=0.01": {"status": "stopped_early", "epochs": 3, "best_epoch": 1, "best": {"val_loss": 0.4, "val_accuracy": 0.9}},
            "2_lr=1": {"status": "running", "epochs": 1, "best_epoch": 1, "best": {"val_loss": 0.3, "val_accuracy": 0.7}},
            "3_lr=10": None}  # its worker died before the job wrote anything
    for name, record in jobs.items():
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={name.split('=')[1]}\n")
        if record:
            (sweep / name / "metrics.json").write_text(json.dumps(record))
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "job": {"config_name": "train"}},
                               "early_stopping": {"monitor": "val_accuracy", "mode": "auto"}})
    with pytest.raises(SystemExit) as ended:
        SweepSummary().on_multirun_end(config)

    assert ended.value.code == 1
    rows = summary(sweep)
    assert [r["job"] for r in rows] == ["1_lr=0.01", "0_lr=0.1", "2_lr=1", "3_lr=10"]  # val_accuracy, highest first
    assert [r["status"] for r in rows] == ["stopped_early", "completed", "running", "no result"]


def test_parallel_launcher_runs_jobs_in_their_own_processes_and_dirs(tmp_path):
    sweep = tmp_path / "sweep"
    code = run_in_process("train", "-m", "hydra/launcher=parallel", "optimizer.lr=1e-3,1e30", "trainer.threads=1", *TINY,
                          f"hydra.sweep.dir={sweep}")

    assert code == 1  # decided by the summary: the diverged job ran in a worker process
    assert [r["status"] for r in summary(sweep)] == ["completed", "diverged"]
    assert len(job_dirs(sweep)) == 2


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path, capfd):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "trainer.max_epochs=1,8", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "first-run.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nettrain", *args], cwd=tmp_path, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 180
            while not list(sweep.glob("1_*/checkpoints/last.pt")):  # job 0 done, job 1 has trained an epoch
                assert proc.poll() is None and time.monotonic() < deadline, \
                    f"the sweep ended before it could be killed:\n{(tmp_path / 'first-run.log').read_text()[-2000:]}"
                time.sleep(0.02)
        finally:
            proc.kill()  # SIGKILL: nothing gets to clean up
            proc.wait()
    done, killed = job_dirs(sweep)
    assert not (killed / "metrics.json").is_file() or metrics(killed)["status"] == "running"
    done_record, done_ckpt = (done / "metrics.json").read_text(), (done / "checkpoints" / "last.pt").stat().st_mtime_ns

    assert run_in_process(*args) == 0

    assert "already completed, skipped" in capfd.readouterr().err
    assert (done / "metrics.json").read_text() == done_record  # not re-trained
    assert (done / "checkpoints" / "last.pt").stat().st_mtime_ns == done_ckpt
    resumed = metrics(killed)
    assert resumed["status"] == "completed"
    assert [h["epoch"] for h in resumed["history"]] == list(range(1, 9))
    assert "resumed from" in (killed / "train.log").read_text()  # continued from its checkpoint, not restarted
    assert [r["status"] for r in summary(sweep)] == ["completed", "completed"]


def test_a_job_killed_before_its_metrics_were_written_resumes_from_its_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "trainer.max_epochs=2", "checkpoint.save_top_k=2", *TINY[1:], f"hydra.sweep.dir={sweep}"]
    assert run_in_process(*args) == 0
    (job,) = job_dirs(sweep)
    # As if killed after epoch 1's checkpoint and before its metrics.json: only last.pt tells.
    (job / "checkpoints" / "epoch=001-val_loss=" f"{metrics(job)['history'][0]['val_loss']:.4f}.pt").replace(
        job / "checkpoints" / "last.pt")
    (job / "metrics.json").unlink()

    assert run_in_process(*args) == 0

    assert [h["epoch"] for h in metrics(job)["history"]] == [1, 2]
    assert "at epoch 2" in (job / "train.log").read_text().split("resumed from")[-1].splitlines()[0]


def test_ctrl_c_stops_the_whole_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"

    def interrupt_when_job_0_has_a_checkpoint() -> None:
        deadline = time.monotonic() + 180
        while not list(sweep.glob("0_*/checkpoints/last.pt")) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    threading.Thread(target=interrupt_when_job_0_has_a_checkpoint, daemon=True).start()
    code = run_in_process("train", "-m", "trainer.max_epochs=30,1", "trainer.limit_train_batches=2",
                          "trainer.limit_val_batches=1", f"hydra.sweep.dir={sweep}")

    assert code == 130
    (job,) = job_dirs(sweep)  # the next job never started
    assert metrics(job)["status"] == "interrupted"
    assert f"run the same command with hydra.sweep.dir={sweep} to resume it" in capsys.readouterr().err


def test_optuna_search_optimizes_the_monitored_metric_and_survives_a_failed_trial(tmp_path):
    sweep = tmp_path / "sweep"
    space = "{optimizer.lr:'choice(1e-3, 1e30)', model:'choice(mlp)', model.dropout:'choice(0.1)', data.batch_size:'choice(64)'}"
    code = run_in_process("train", "-m", "hparams_search=digits_optuna", "hydra.sweeper.n_trials=3",
                          f"hydra.sweeper.params={space}", *TINY, f"hydra.sweep.dir={sweep}")

    rows = summary(sweep)
    assert len(rows) == 3  # a diverged trial is the worst value to Optuna, not the end of the search
    assert {r["status"] for r in rows} == {"completed", "diverged"}  # the seeded sampler tries both lrs
    assert code == 1
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(min(float(r["val_loss"]) for r in rows if r["val_loss"]))
    assert best.best_params["optimizer.lr"] == pytest.approx(1e-3)


@pytest.mark.parametrize("monitor, direction", [("val_loss", "minimize"), ("val_accuracy", "maximize")])
def test_optuna_direction_follows_the_monitored_metric(monitor, direction):
    from hydra import compose, initialize_config_module

    from nettrain.config.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_module("nettrain.configs", version_base="1.3"):
        cfg = compose("train", ["hparams_search=digits_optuna", f"early_stopping.monitor={monitor}"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.direction == direction
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")


@pytest.mark.parametrize("args, package, extra", [
    (["hparams_search=digits_optuna"], "hydra-optuna-sweeper", "sweep"),
    (["hydra/launcher=parallel"], "hydra-joblib-launcher", "sweep"),
    (["hydra/launcher=slurm"], "hydra-submitit-launcher", "slurm"),
])
def test_a_missing_plugin_says_what_to_install(args, package, extra, monkeypatch, capsys):
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # registers the installed plugins' configs; then hide this one's
    repo = ConfigStore.instance().repo["hydra"]
    for group, name in (("sweeper", "optuna.yaml"), ("launcher", "joblib.yaml"), ("launcher", "submitit_slurm.yaml")):
        monkeypatch.delitem(repo[group], name)

    assert run_in_process("train", "-m", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nettrain: ") and len(err.splitlines()) == 1
    assert f"pip install {package}" in err and f"pip install 'nettrain[{extra}]'" in err


def test_slurm_launcher_config_composes(capsys):
    assert run_in_process("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra",
                          "-p", "hydra.launcher") == 0
    launcher = OmegaConf.create(capsys.readouterr().out.split("\n", 1)[1])
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.timeout_min == 240


def test_run_and_job_dirs_never_collide(capsys):
    assert run_in_process("train", "--cfg", "hydra", "--resolve", "-p", "hydra.run.dir") == 0
    # Microseconds in a run's dir: runs started in the same second get their own; the name (experiment or
    # model) ends it, so TensorBoard names runs readably.
    assert re.search(r"outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}-\d{6}_mlp$", capsys.readouterr().out.strip())
    assert run_in_process("train", "--cfg", "hydra", "-p", "hydra.sweep") == 0
    sweep = OmegaConf.create(capsys.readouterr().out)
    assert OmegaConf.to_container(sweep)["subdir"] == "${job_dir:}"  # jobs of one sweep: numbered (below)


def test_job_dirs_are_numbered_and_named_by_what_they_sweep(tmp_path, monkeypatch):
    from nettrain.config.resolvers import SWEPT_KEYS, _job_dir

    job = OmegaConf.create({"hydra": {"job": {"num": 3, "override_dirname": "model.hidden=[8],optimizer.lr=0.1"},
                                      "sweep": {"dir": str(tmp_path)}, "sweeper": {"params": {"model.dropout": "x"}},
                                      "overrides": {"task": ["model.hidden=[8]", "optimizer.lr=0.1", "model.dropout=0.2"]}}})
    monkeypatch.setenv(SWEPT_KEYS, "optimizer.lr")
    assert _job_dir(_root_=job) == "3_optimizer.lr=0.1,model.dropout=0.2"  # swept on the command line, and by Optuna
    monkeypatch.delenv(SWEPT_KEYS)
    assert _job_dir(_root_=job) == "3_model.hidden=-8-,optimizer.lr=0.1"  # not launched by nettrain: every override
    monkeypatch.setenv(SWEPT_KEYS, "optimizer.lr")
    (tmp_path / "3_model.hidden=-8-,optimizer.lr=0.1").mkdir()  # a sweep begun before: its job keeps its dir
    assert _job_dir(_root_=job) == "3_model.hidden=-8-,optimizer.lr=0.1"
