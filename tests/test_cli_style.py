"""One argument style across subcommands: key=value with a positional run dir, dirs holding `=`,
did-you-mean for mistyped keys, --help per command, no traceback on a closed pipe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import run_in_process
from nettrain.config.overrides import quote_paths


@pytest.fixture(scope="module")
def sweep_job(tmp_path_factory):
    """A sweep job's dir: its name holds `=` and `,`."""
    tmp = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        assert run_in_process("train", "-m", "optimizer.lr=0.01", "trainer.max_epochs=1",
                              f"hydra.sweep.dir={tmp / 'sweep'}") == 0
    (job,) = (tmp / "sweep").glob("0_*")
    assert "=" in job.name and "," in job.name
    return job


def test_every_command_takes_a_sweep_job_dir(sweep_job, capsys):
    assert run_in_process("eval", str(sweep_job), "--json") == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] > 0.5
    assert run_in_process("eval", f"ckpt={sweep_job}", "json=true", f"output={sweep_job / 'e2'}") == 0
    capsys.readouterr()
    assert run_in_process("export", str(sweep_job), "format=torchscript") == 0
    assert run_in_process("plot", str(sweep_job)) == 0
    capsys.readouterr()
    assert run_in_process("runs", str(sweep_job), "--json") == 0
    assert json.loads(capsys.readouterr().out)[0]["run_dir"] == str(sweep_job)
    # train: resume= and hydra.run.dir= hold the path whole (Hydra would read `=` and `,` as syntax)
    assert run_in_process("train", f"resume={sweep_job}", "trainer.max_epochs=2") == 0
    assert json.loads((sweep_job / "metrics.json").read_text())["epochs"] == 2


def test_paths_are_quoted_for_hydra_and_nothing_else_is():
    assert quote_paths(["resume=out/3_lr=0.1,x=1", "optimizer.lr=1e-3,1e-2", "data.root='a=b'"]) == [
        "resume='out/3_lr=0.1,x=1'", "optimizer.lr=1e-3,1e-2", "data.root='a=b'"]
    assert quote_paths(["hydra.run.dir=it's"]) == ["hydra.run.dir='it\\'s'"]


@pytest.mark.parametrize("args, message", [
    (["train", "trainer.max_epoch=3"], "unknown key trainer.max_epoch: did you mean trainer.max_epochs?"),
    (["train", "optimizer.lrr=1"], "unknown key optimizer.lrr: did you mean optimizer.lr?"),
    (["train", "modle=cnn"], "unknown key modle: did you mean model?"),
    (["lr-find", "lr_find.step=20"], "unknown key lr_find.step: did you mean lr_find.steps?"),
    (["train", "model=cnn", "model.memory=true"],  # a key of another model, not a typo
     "unknown key model.memory for the model chosen: it is a key of model=mlp; choose model=mlp or leave it out"),
    (["train", "logger=[csv,tensorbord]"], "unknown logger=tensorbord; did you mean tensorboard? allowed: csv, mlflow"),
    (["eval", "ckpt=x", "splt=test"], "unknown argument splt=...; did you mean split?"),
    (["predict", "ckpt=x", "input=y", "topk=3"], "unknown argument topk=...; did you mean top_k?"),
    (["train", "model=mpl"], "unknown model=mpl; did you mean mlp? allowed: bag, cnn"),
    (["train", "optimizer.backbone_lr_factor=0.1"],  # nettrain reads it, no config file sets it: never another key
     "optimizer.backbone_lr_factor is a key nettrain reads that no config sets: add it with +optimizer.backbone_lr_factor=VALUE"),
    (["train", "optimizer.nesterv=true"], "did you mean optimizer.nesterov (a key of optimizer=sgd)?"),
])
def test_mistyped_keys_get_the_nearest_valid_one(args, message, capfd):
    assert run_in_process(*args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("command, usage", [("lr-find", "usage: nettrain lr-find"),
                                            ("check-data", "usage: nettrain check-data"),
                                            ("train", "usage: nettrain train")])
def test_hydra_commands_have_their_own_help(command, usage, capsys):
    assert run_in_process(command, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith(usage) and "powered by Hydra" not in out and "lr_find" not in out.split("\n")[0]


def test_a_closed_pipe_ends_quietly(tmp_path):
    for args in (["train", "--help"], ["runs", "--help"], ["--help"]):
        proc = subprocess.run(f"{sys.executable} -m nettrain {' '.join(args)} | head -1", shell=True, cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
        assert proc.stdout.startswith("usage: nettrain")


COMMANDS = ["train", "lr-find", "check-data", "eval", "predict", "export", "plot", "runs"]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_help_fits_80_columns(command, capsys):
    assert run_in_process(*filter(None, [command]), "--help") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and max(map(len, lines)) <= 80, [line for line in lines if len(line) > 80]


def test_train_help_says_what_each_key_of_the_chosen_options_does(capsys):
    assert run_in_process("train", "model=cnn", "--help") == 0
    out = capsys.readouterr().out
    assert "  model: bag *cnn googlenet" in out  # the groups, the chosen option marked
    assert "model.kernel_size=3" in out and "model.hidden" not in out  # the CNN's keys, not the MLP's
    assert "  trainer.device=auto  auto (CUDA when present, else CPU) | cpu | cuda | cuda:N" in out
    assert "early_stopping.patience=null" in out and "epochs without improvement before stopping" in out


@pytest.mark.parametrize("command, own", [("lr-find", "lr_find.steps=200  one batch per step"),
                                          ("check-data", "strict=false")])
def test_lr_find_and_check_data_help_name_their_own_keys_and_point_to_trains(command, own, capsys):
    assert run_in_process(command, "--help") == 0
    out = capsys.readouterr().out
    assert own in out and "`nettrain train --help` lists them" in out and "model.hidden" not in out
