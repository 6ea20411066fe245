"""`nettrain runs`: the runs under outputs/ in a table, newest first or by a metric."""

from __future__ import annotations

import re

import pytest

from conftest import metrics, run_in_process

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=3"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, object]:
    """Three runs under one outputs/: a plain run, an experiment, and a diverged sweep job."""
    root = tmp_path_factory.mktemp("runs") / "outputs"
    made = {}
    for name, args in [("mlp", ["model.hidden=[32]"]), ("experiment", ["+experiment=digits_cnn", "model.channels=[8]"]),
                       ("sweep", ["-m", "optimizer.lr=1e30"])]:
        dir_key = "hydra.sweep.dir" if "-m" in args else "hydra.run.dir"
        run_in_process("train", *args, *TINY, f"{dir_key}={root / name}")
        made[name] = next((root / name).glob("0_*")) if "-m" in args else root / name
    (root / "lr_find" / "x" / ".hydra").mkdir(parents=True)  # lr-find output: not a training run
    (root / "lr_find" / "x" / ".hydra" / "config.yaml").write_text("model: {name: mlp}\n")
    return {"root": root, **made}


@pytest.fixture(autouse=True)
def _unwrapped(monkeypatch):
    """Output to a pipe, as a script reads it: unwrapped (unless $COLUMNS says otherwise, as one test does)."""
    monkeypatch.delenv("COLUMNS", raising=False)


def rows(out: str) -> list[str]:
    """The table's data rows (the lines that start with a date)."""
    return [line for line in out.splitlines() if re.match(r"\W*\d{2}-\d{2} \d{2}:\d{2}", line)]


def test_runs_lists_newest_first_with_status_and_best_metrics(outputs, capsys):
    assert run_in_process("runs", str(outputs["root"])) == 0
    table = rows(capsys.readouterr().out)
    assert len(table) == 3  # the lr-find dir is not a run
    sweep, experiment, mlp = table
    assert "sweep/0_optimizer.lr=1e+30" in sweep and "diverged" in sweep and "optimizer.lr=1e+30" in sweep
    assert "digits_cnn" in experiment and "+experiment=digits_cnn model.channels=[8]" in experiment
    assert " mlp " in mlp and "completed" in mlp
    best = metrics(outputs["mlp"])["best"]
    assert f"{best['val_loss']:.4f}" in mlp and f"{best['val_accuracy']:.2%}" in mlp


def test_runs_sort_by_a_metric_puts_the_best_first(outputs, capsys):
    accuracy = {name: metrics(outputs[name])["best"]["val_accuracy"] for name in ("mlp", "experiment")}
    assert run_in_process("runs", str(outputs["root"]), "--sort", "val_accuracy") == 0
    table = rows(capsys.readouterr().out)
    expected = sorted(accuracy, key=accuracy.get, reverse=True)
    assert [next(n for n in ("mlp", "experiment") if f" {n} " in row or f"{n}/" in row) for row in table[:2]] == expected
    assert "diverged" in table[2]  # no metric: last


def test_runs_defaults_to_outputs_in_the_current_dir(outputs, monkeypatch, capsys):
    monkeypatch.chdir(outputs["root"].parent)
    assert run_in_process("runs") == 0
    assert len(rows(capsys.readouterr().out)) == 3


@pytest.mark.parametrize("args, error", [
    (["outputs", "--sort", "val_acc"], "invalid --sort='val_acc': allowed: val_loss, val_accuracy, val_rmse, val_mae"),
    (["no/such/dir"], "no such directory: no/such/dir (runs are listed from a dir such as outputs)"),
    (["outputs", "sortt=val_loss"], "unknown argument sortt=...; did you mean sort? allowed: dir, sort, json"),
    (["outputs", "colour=red"], "unknown argument colour=...; allowed: dir, sort, json"),
])
def test_bad_runs_arguments_are_one_line_errors(args, error, outputs, monkeypatch, capsys):
    monkeypatch.chdir(outputs["root"].parent)
    assert run_in_process("runs", *args) == 2
    assert capsys.readouterr().err == f"nettrain: {error}\n"


def test_runs_help(capsys):
    assert run_in_process("runs", "--help") == 0
    assert "usage: nettrain runs [[dir=]DIR] [sort=METRIC] [--json]" in capsys.readouterr().out


def test_runs_json_and_a_sweep_job_dir_whose_name_holds_equals(outputs, capsys):
    import json

    job = outputs["sweep"]
    assert "=" in job.name
    assert run_in_process("runs", str(job), "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["run_dir"] == str(job) and listed["status"] == "diverged"
    assert listed["overrides"][0] == "optimizer.lr=1e+30"
    assert run_in_process("runs", f"dir={job}", "json=true") == 0
    assert json.loads(capsys.readouterr().out)[0]["run_dir"] == str(job)


def test_the_runs_table_fits_80_columns_with_whole_headers_and_values(outputs):
    import io

    from rich.console import Console

    from nettrain.commands.runs import runs_table
    from nettrain.records.runs import find_runs

    out = Console(file=io.StringIO(), width=80, color_system=None)
    out.print(runs_table(find_runs(outputs["root"]), outputs["root"], width=80))
    lines = out.file.getvalue().splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in "".join(lines)
    assert any(line.split() == ["run", "status", "val", "loss", "val", "acc", "epochs"] for line in lines)
    assert sum(" diverged " in line for line in lines) == 1 and sum(" completed " in line for line in lines) == 2
    assert any(line.strip().startswith("mlp ") or line.strip() == "mlp" for line in lines)  # a run dir, on a line of its own


def test_runs_piped_honours_columns(outputs, tmp_path):
    from conftest import nettrain

    narrow = nettrain("runs", str(outputs["root"]), cwd=tmp_path, env={"COLUMNS": "80"}).stdout
    assert max(map(len, narrow.splitlines())) <= 80
    wide = nettrain("runs", str(outputs["root"]), cwd=tmp_path, env={"COLUMNS": ""}).stdout
    assert len(rows(wide)) == 3  # unwrapped: one line per run
