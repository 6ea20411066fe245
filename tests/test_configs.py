"""Every config option composes, every model/loss/optimizer/schedule trains, and Hydra's own features work."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from conftest import metrics, nettrain, run_in_process, train
from nettrain.config.resolvers import register_resolvers
from nettrain.config.rules import validate

CONFIGS = Path(__file__).parents[1] / "configs"
GROUPS = {g: sorted(p.stem for p in (CONFIGS / g).glob("*.yaml"))
          for g in ("model", "data", "loss", "optimizer", "scheduler", "trainer", "debug")}
FAST = ["debug=fast"]


@pytest.mark.parametrize("group, option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    register_resolvers()
    with initialize_config_module("nettrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"])
    # debug overlays are global packages: they change trainer settings, not a `debug` key.
    assert cfg.trainer.max_epochs >= 1 if group == "debug" else cfg[group] is not None


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    register_resolvers()
    with initialize_config_module("nettrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={experiment}"])
    if cfg.data.name == "digits":
        validate(cfg)


@pytest.mark.parametrize("overrides", [
    ["model=cnn", "optimizer=sgd", "optimizer.nesterov=true"],
    ["model=resnet18", "optimizer=adamw", "scheduler=cosine", "scheduler.warmup_epochs=0.5"],
    ["loss=mse", "optimizer=rmsprop", "scheduler=step", "scheduler.step_epochs=1"],
    ["loss=bce", "scheduler=onecycle"],
    ["loss=cross_entropy", "loss.label_smoothing=0.1", "trainer.grad_clip=1.0", "trainer.accumulate_grad_batches=2"],
    ["trainer.ema_decay=0.9", "trainer.precision=bf16"],
], ids=lambda o: " ".join(o))
def test_models_losses_optimizers_and_schedules_train(tmp_path, overrides):
    run_dir = train(tmp_path, *FAST, *overrides)
    recorded = metrics(run_dir)
    assert recorded["status"] == "completed" and recorded["history"][0]["train_loss"] > 0


def test_experiments_train(tmp_path):
    for experiment in ("digits_mlp", "digits_cnn"):
        run_dir = train(tmp_path, f"+experiment={experiment}", "trainer.max_epochs=1", name=experiment)
        assert metrics(run_dir)["status"] == "completed"


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = nettrain("train", "model=cnn", "optimizer.lr=0.02", "--cfg", "job", cwd=tmp_path)
    assert "name: cnn" in proc.stdout and "lr: 0.02" in proc.stdout
    assert not (tmp_path / "outputs").exists()


def test_conflicting_hydra_modes_are_one_line(tmp_path, capsys):
    assert run_in_process("train", "-m", "optimizer.lr=1e-3,1e-2", "--cfg", "job") == 2
    err = capsys.readouterr().err.strip()
    assert err == "nettrain: Only one of --run, --multirun, --cfg, --info and --shell_completion can be specified"


def test_help_lists_the_config_groups(tmp_path):
    assert "train" in nettrain("--help", cwd=tmp_path).stdout
    out = nettrain("train", "--help", cwd=tmp_path).stdout
    assert "  model: bag cnn googlenet gpt hf inception_v3 *mlp resnet18 resnet34 resnet50" in out


def test_user_experiments_from_their_own_config_dir(tmp_path):
    own = tmp_path / "my_configs" / "experiment"
    own.mkdir(parents=True)
    (own / "tiny.yaml").write_text("# @package _global_\nmodel:\n  hidden: [32]\ntrainer:\n  max_epochs: 1\n")
    assert run_in_process("train", "--config-dir", str(tmp_path / "my_configs"), "+experiment=tiny",
                          "hydra.run.dir=run") == 0
    assert metrics(tmp_path / "run")["epochs"] == 1
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text().count("- 32") == 1


def test_shell_completion_offers_config_groups(tmp_path):
    proc = nettrain("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": "nettrain train mod", "COMP_POINT": "18"})
    assert "model=" in proc.stdout


def test_a_wheel_install_finds_its_configs_from_any_directory(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(repo)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("nettrain-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = nettrain("train", "debug=fast", "hydra.run.dir=run", cwd=elsewhere, env={"PYTHONPATH": str(tmp_path / "site")})
    assert str(tmp_path / "site" / "nettrain") in subprocess.run(
        [sys.executable, "-c", "import nettrain; print(nettrain.__file__)"], cwd=elsewhere, capture_output=True,
        text=True, env={"PYTHONPATH": str(tmp_path / "site")}).stdout
    assert metrics(elsewhere / "run")["status"] == "completed", proc.stderr
