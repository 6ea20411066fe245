"""`nettrain lr-find`: the learning-rate range test on the same configs as `nettrain train`."""

from __future__ import annotations

import math
import re

import pytest
from omegaconf import OmegaConf

from conftest import run_in_process


def test_lr_find_on_digits_suggests_an_lr_and_writes_the_curve(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "lr"
    assert run_in_process("lr-find", f"hydra.run.dir={run_dir}", "lr_find.steps=100") == 0

    out = capsys.readouterr().out
    suggested = float(re.search(r"suggested lr: (\S+)", out).group(1))
    assert 3e-4 <= suggested <= 3e-2  # Adam on digits' MLP trains well around 1e-3 .. 1e-2
    assert f"nettrain train optimizer.lr={suggested:.2e}" in out
    assert (run_dir / "lr_find.png").read_bytes().startswith(b"\x89PNG")

    events = EventAccumulator(str(run_dir)).Reload()
    lrs = [e.value for e in events.Scalars("lr_find/lr")]
    losses = [e.value for e in events.Scalars("lr_find/loss")]
    assert len(lrs) == len(losses) < 100  # stopped early: the loss exploded before max_lr
    assert lrs[0] == pytest.approx(1e-7)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert ratios == pytest.approx([(10 / 1e-7) ** (1 / 99)] * len(ratios), rel=1e-4)  # exponential
    assert max(losses[-3:]) > 2 * min(losses) or not math.isfinite(losses[-1])
    assert "lr_find/curve" in events.Tags()["images"]


def test_lr_find_takes_the_same_model_and_optimizer_configs_as_train(tmp_path, capsys):
    run_dir = tmp_path / "lr"
    assert run_in_process("lr-find", f"hydra.run.dir={run_dir}", "model=cnn", "model.channels=[8]", "optimizer=sgd",
                          "lr_find.steps=20", "lr_find.max_lr=1e-2") == 0
    assert "nettrain train model=cnn model.channels=[8] optimizer=sgd optimizer.lr=" in capsys.readouterr().out
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.model.name == "cnn" and config.optimizer._target_ == "torch.optim.SGD"


@pytest.mark.parametrize("arg, error", [
    ("lr_find.max_lr=1e-8", "invalid lr_find.max_lr=1e-08: must be greater than lr_find.min_lr=1e-07"),
    ("lr_find.steps=3", "invalid lr_find.steps=3: must be an integer >= 10"),
    ("optimizer.lr=-1", "invalid optimizer.lr=-1: must be a number > 0"),
    ("model=nope", "unknown model=nope; allowed: "),
])
def test_bad_lr_find_values_are_one_line_errors_and_leave_nothing(arg, error, tmp_path, capsys):
    run_dir = tmp_path / "lr"
    assert run_in_process("lr-find", f"hydra.run.dir={run_dir}", arg) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and error in err
    assert not run_dir.exists()
