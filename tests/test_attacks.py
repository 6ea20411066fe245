"""Never lose a run, part 2: what a hostile or an unlucky user does to a run, and what must hold.

Each case ends in one line (no traceback) and loses nothing: no code runs from a file, no history
is wiped, no checkpoint set disagrees with itself, no run dir is taken over by a second command.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import history, metrics, nettrain, run_in_process, save_malicious_checkpoint, train
from datagen import image_folder, machines_csv
from nettrain import files as files_module
from nettrain.files import WriteError
from nettrain.records import checkpoint as checkpoint_module
from nettrain.records.checkpoint import load_checkpoint, save_checkpoint

SMALL = ["model.hidden=[32]", "trainer.log_every_n_steps=5"]


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert "Traceback" not in text and "\x1b" not in text
    return lines[0]



def _snapshot(run_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a run dir with its bytes and modification time."""
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


# 1. No code runs from a checkpoint, ever ------------------------------------------------------

def _poisoned(run_dir: Path, where: str, payload: dict) -> Path:
    """The run's last.pt with a `_target_` planted in its stored optimizer config."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    ckpt.pop("path")
    optimizer = ckpt["config"]["optimizer"]
    if where == "value":
        optimizer["betas"] = payload
    elif where == "list":
        optimizer["betas"] = [payload, 0.999]
    else:
        optimizer["extra"] = {"deeper": {"still": payload}}
    path = run_dir / "checkpoints" / "last.pt"
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, path)
    return path


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    return train(tmp_path, "trainer.max_epochs=1", *SMALL)


def test_resume_refuses_the_torch_load_attack_from_the_issue(tmp_path, finished_run, capfd):
    evil, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    save_malicious_checkpoint(evil, marker)
    _poisoned(finished_run, "value", {"_target_": "torch.load", "f": str(evil), "weights_only": False})
    before = _snapshot(finished_run)

    assert run_in_process("train", f"resume={finished_run}", "trainer.max_epochs=2") == 2

    line = _one_line(capfd.readouterr().err)
    assert "optimizer.betas._target_='torch.load'" in line and "refusing" in line
    assert not marker.exists()
    assert _snapshot(finished_run) == before


@pytest.mark.parametrize("where, key", [("list", "optimizer.betas[0]._target_"),
                                        ("nested", "optimizer.extra.deeper.still._target_")])
def test_a_target_hidden_in_a_list_or_a_nested_dict_is_refused(tmp_path, finished_run, capfd, where, key):
    marker = tmp_path / "pwned"
    _poisoned(finished_run, where, {"_target_": "builtins.open", "file": str(marker), "mode": "w"})

    assert run_in_process("train", f"resume={finished_run}", "trainer.max_epochs=2") == 2

    assert f"{key}='builtins.open'" in _one_line(capfd.readouterr().err)
    assert not marker.exists()


def test_eval_predict_export_and_init_from_never_instantiate_a_stored_target(tmp_path, finished_run):
    marker = tmp_path / "pwned"
    ckpt = _poisoned(finished_run, "value", {"_target_": "builtins.open", "file": str(marker), "mode": "w"})
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(f"x{i}" for i in range(64)) + "\n" + ",".join("0" for _ in range(64)) + "\n")

    assert run_in_process("eval", f"ckpt={ckpt}") == 0
    assert run_in_process("export", f"ckpt={ckpt}", f"output={tmp_path / 'model.onnx'}") == 0
    run_in_process("predict", f"ckpt={ckpt}", f"input={rows}")
    train(tmp_path, f"model.init_from={ckpt}", "trainer.max_epochs=1", *SMALL, name="finetuned")
    assert not marker.exists()


def test_resume_accepts_the_targets_nettrain_ships(tmp_path):
    run_dir = train(tmp_path, "optimizer=sgd", "trainer.max_epochs=1", *SMALL)
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 0
    assert metrics(run_dir)["epochs"] == 2


# 2. Signals to the whole process group, with DataLoader workers ----------------------------------

PHOTOS = ["data=imagefolder", "data.cache=false", "data.num_workers=2", "data.image_size=16", "data.batch_size=4",
          "model=cnn", "model.channels=[4]", "trainer.max_epochs=30", "trainer.checkpoint_every_n_steps=2"]


def _group_run(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    root = image_folder(tmp_path / "photos", per_class=24)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nettrain", "train", f"hydra.run.dir={run_dir}", f"data.root={root}",
                             *PHOTOS], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a terminal or SLURM makes
    deadline = time.time() + 120
    while not (run_dir / "metrics.json").is_file() or not metrics(run_dir)["history"]:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    return proc, run_dir


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_saves_like_one_to_the_main_process(tmp_path, sig, code):
    proc, run_dir = _group_run(tmp_path)
    os.killpg(proc.pid, sig)  # the main process and its DataLoader workers alike
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == code, stderr
    record = metrics(run_dir)
    assert record["status"] == "interrupted" and len(record["history"]) >= 1
    assert stderr.count(f"nettrain train resume={run_dir}") == 1
    assert "DataLoader worker" not in stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["progress"]["epoch"] >= 1


def test_a_double_ctrl_c_to_the_group_never_leaves_status_running(tmp_path):
    proc, run_dir = _group_run(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)

    assert proc.returncode == 130
    assert metrics(run_dir)["status"] == "interrupted"
    assert metrics(run_dir)["history"]


# 3. History is never wiped -----------------------------------------------------------------------

def test_a_disk_that_fills_mid_run_keeps_every_recorded_epoch(tmp_path, monkeypatch, capfd):
    real = checkpoint_module.save_checkpoint
    calls = []

    def fills_up(state, *paths):
        calls.append(paths)
        if len(calls) == 3:  # epoch 3's checkpoint: the disk is full
            raise WriteError(f"could not write {paths[0]}: No space left on device")
        real(state, *paths)

    monkeypatch.setattr("nettrain.training.checkpoints.save_checkpoint", fills_up)
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=4", *SMALL) == 1

    record = metrics(run_dir)
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    assert [r["epoch"] for r in record["history"]] >= [1, 2]
    assert "Traceback" not in capfd.readouterr().err


# 4. Checkpoint sets stay consistent under a kill at any instant ------------------------------------

class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no cleanup (not even of temp files)."""


def _consistent(run_dir: Path) -> None:
    ckpt_dir = run_dir / "checkpoints"
    last = load_checkpoint(ckpt_dir / "last.pt")
    best = load_checkpoint(ckpt_dir / "best.pt")
    record = metrics(run_dir)
    assert best["progress"]["epoch"] == record["best_epoch"] == last["progress"]["best_epoch"]
    listed = sorted(name for _, name in last["progress"]["top_k"])
    assert sorted(p.name for p in ckpt_dir.glob("epoch=*.pt")) == listed
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    return train(tmp, "trainer.max_epochs=3", "checkpoint.save_top_k=2", *SMALL)


@pytest.mark.parametrize("nth", range(5, 13))
def test_a_kill_at_any_rename_is_repaired_on_resume(tmp_path, monkeypatch, uninterrupted, nth):
    real, count = os.replace, [0]

    def replace(src, dst):
        count[0] += 1
        if count[0] == nth:
            raise Killed
        real(src, dst)

    monkeypatch.setattr(files_module.os, "replace", replace)
    run_dir = tmp_path / "run"
    with pytest.raises(Killed):
        run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=3", "checkpoint.save_top_k=2", *SMALL)
    monkeypatch.setattr(files_module.os, "replace", real)

    assert run_in_process("train", f"resume={run_dir}") == 0

    _consistent(run_dir)
    assert history(run_dir) == history(uninterrupted)
    ours, theirs = (load_checkpoint(d / "checkpoints" / "best.pt")["model"] for d in (run_dir, uninterrupted))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# 5. A run dir belongs to one run ------------------------------------------------------------------

def test_refused_commands_leave_an_existing_run_dir_untouched(tmp_path, finished_run, capfd):
    before = _snapshot(finished_run)
    for args in ([f"hydra.run.dir={finished_run}"], [f"hydra.run.dir={finished_run}", "optimizer.lr=-1"],
                 [f"resume={finished_run}", "model.dropout=0.5"], [f"resume={finished_run}", "trainer.max_epochs=-1"],
                 [f"resume={finished_run}"]):
        assert run_in_process("train", *args) == 2
        _one_line(capfd.readouterr().err)
        assert _snapshot(finished_run) == before, args


def test_a_second_process_on_a_run_dir_is_refused_naming_the_first(tmp_path):
    proc, run_dir = _group_run(tmp_path)
    try:
        for args in ([f"resume={run_dir}"], [f"hydra.run.dir={run_dir}"]):
            second = nettrain("train", *args, cwd=tmp_path, check=False)
            assert second.returncode != 0
            line = _one_line(second.stderr)
            assert f"is in use by process {proc.pid}" in line and "nettrain" in line
        assert proc.poll() is None  # the first run goes on, untouched
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    assert metrics(run_dir)["status"] == "interrupted"


# 6. Every write failure is one line ---------------------------------------------------------------

def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = nettrain("train", "hydra.run.dir=a_file/run", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "a_file" in _one_line(proc.stderr)


def test_checkpoints_turning_read_only_mid_run_is_one_line(tmp_path, monkeypatch, capfd):
    real, calls = os.replace, [0]

    def read_only(src, dst):
        calls[0] += 1
        if calls[0] > 4:
            raise PermissionError(13, "Permission denied", str(dst))
        real(src, dst)

    def unlink(self, missing_ok=False):  # a read-only dir: nothing there can be deleted
        if self.exists() or not missing_ok:
            raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(files_module.os, "replace", read_only)
    monkeypatch.setattr(files_module.Path, "unlink", unlink)
    assert run_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=3", *SMALL) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Permission denied" in err
    assert metrics(tmp_path / "run")["history"]


def test_export_to_an_unwritable_path_is_one_line(tmp_path, digits_run, capfd):
    (tmp_path / "a_file").write_text("")
    assert run_in_process("export", f"ckpt={digits_run}", f"output={tmp_path / 'a_file' / 'model.onnx'}") != 0
    assert "a_file" in _one_line(capfd.readouterr().err)


def test_a_top_k_file_that_cannot_be_deleted_is_a_warning(tmp_path, monkeypatch):
    real = Path.unlink

    def unlink(self, missing_ok=False):
        if self.name.startswith("epoch="):
            raise PermissionError(13, "Permission denied", str(self))
        real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    run_dir = train(tmp_path, "trainer.max_epochs=3", "checkpoint.save_top_k=1", *SMALL)
    assert metrics(run_dir)["status"] == "completed"


# 7. Bad data is named, not trained on ------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "1e308", "-inf"])
def test_a_csv_value_past_float32_is_refused_naming_column_and_line(tmp_path, capfd, value):
    path = machines_csv(tmp_path / "m.csv")
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[5].split(",")
    row[header.index("rpm")] = value
    lines[5] = ",".join(row)
    path.write_text("\n".join(lines) + "\n")
    base = ["data=csv", f"data.path={path}", "data.target=failure"]

    assert run_in_process("train", *base) == 2
    line = _one_line(capfd.readouterr().err)
    assert "'rpm'" in line and "line 6" in line

    assert run_in_process("check-data", *base, "strict=true") == 1
    assert "'rpm'" in capfd.readouterr().err


def test_a_csv_target_with_one_class_is_refused(tmp_path, capfd):
    path = tmp_path / "one.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{i * 2},yes\n" for i in range(40)))
    assert run_in_process("train", "data=csv", f"data.path={path}", "data.target=label") == 2
    assert "one class only ('yes')" in _one_line(capfd.readouterr().err)


def test_resume_warns_when_the_data_on_disk_changed(tmp_path, capfd):
    root = image_folder(tmp_path / "photos", per_class=8)
    args = ["data=imagefolder", f"data.root={root}", "data.image_size=16", "data.num_workers=0", "model=cnn",
            "model.channels=[4]"]
    run_dir = train(tmp_path, *args, "trainer.max_epochs=1")
    image_folder(tmp_path / "photos", per_class=10)  # two more photos per class and split

    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 0
    assert "the data changed since the checkpoint (32 files then, 40 now" in capfd.readouterr().err


# 8. Smaller ------------------------------------------------------------------------------------------

def test_a_payload_pickle_is_a_refusal_whatever_case_torch_words_it_in(tmp_path, monkeypatch):
    path = tmp_path / "payload.pt"
    path.write_bytes(b"PK\x03\x04")  # a zip archive's start, as torch.save writes one

    def load(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed.\nWeightsUnpickler error: unsupported global: "
                                     "GLOBAL posix.system was not an allowed global by default.")

    monkeypatch.setattr(checkpoint_module.torch, "load", load)
    with pytest.raises(Exception, match="refusing to load .*payload.pt: not a plain-tensor checkpoint"):
        load_checkpoint(path)


def test_errors_written_to_a_pipe_carry_no_terminal_codes(tmp_path):
    for args in (["optimizer.lr=-1"], ["model=nope"], ["+trainer.foo=1"], ["resume=nowhere"]):
        proc = nettrain("train", *args, cwd=tmp_path, check=False, env={"TERM": "xterm-256color"})
        assert proc.returncode == 2
        _one_line(proc.stderr)


def test_an_unknown_added_trainer_key_is_refused_with_a_suggestion(capfd):
    assert run_in_process("train", "+trainer.max_epoch=3") == 2
    assert "did you mean trainer.max_epochs?" in _one_line(capfd.readouterr().err)
    assert run_in_process("train", "+trainer.foo=1") == 2
    assert "unknown key trainer.foo" in _one_line(capfd.readouterr().err)
    assert not Path("outputs").exists() or not any(Path("outputs").rglob("metrics.json"))


def test_options_for_a_target_may_still_be_added(tmp_path):
    run_dir = train(tmp_path, "+optimizer.amsgrad=true", "trainer.max_epochs=1", *SMALL)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


def test_a_ctrl_c_after_the_loop_let_go_of_it_is_exit_130_not_a_traceback(tmp_path, monkeypatch):
    """A second Ctrl-C that lands once the loop has handed SIGINT back to Python (while the run closes
    its records) arrives as KeyboardInterrupt: the same exit 130 and interrupted status as one in the loop."""
    import nettrain.commands.train

    run_dir = train(tmp_path, "trainer.max_epochs=1")
    monkeypatch.setattr(nettrain.commands.train, "launch", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 130
    assert metrics(run_dir)["status"] == "interrupted"


def test_a_raw_pickle_with_a_payload_is_refused_for_what_it_is(tmp_path, capfd):
    marker = tmp_path / "PWNED"

    class WritesAFile:
        def __reduce__(self):
            return open, (str(marker), "w")

    with open(tmp_path / "raw.pt", "wb") as f:
        pickle.dump({"format": "nettrain-checkpoint", "model": WritesAFile()}, f)
    for command in (["eval", str(tmp_path / "raw.pt")], ["predict", str(tmp_path / "raw.pt"), "input=x.png"],
                    ["train", f"model.init_from={tmp_path / 'raw.pt'}"]):
        assert run_in_process(*command) == 2
        line = _one_line(capfd.readouterr().err)
        assert "it is a raw pickle, not a nettrain checkpoint" in line and "could run any code" in line, line
    assert not marker.exists()


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "shutil.rmtree"])
def test_a_target_of_pythons_system_modules_is_refused_at_once_in_one_line(tmp_path, capfd, target):
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "evil.yaml").write_text(f"_target_: {target}\ncommand: touch {tmp_path / 'PWNED'}\n")
    started = time.perf_counter()
    assert run_in_process("train", "--config-dir", str(tmp_path / "conf"), "model=evil") == 2
    assert time.perf_counter() - started < 3  # before torch is imported, data read or a run dir made
    line = _one_line(capfd.readouterr().err)
    assert line.startswith(f"nettrain: refusing model._target_={target}: it is in Python's ") and line.endswith(
        "(e.g. mypkg.nets.TinyNet, torch.optim.SGD)")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "outputs").exists()


@pytest.fixture
def read_only(tmp_path):
    """Makes a dir read-only for real: a read-only bind mount as root (whom file modes do not stop), else chmod."""
    made = []

    def make(path: Path) -> Path:
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
            made.append(("chmod", path))
            return path
        mount = tmp_path / f"ro-{len(made)}"
        mount.mkdir()
        for args in (["mount", "--bind", str(path), str(mount)], ["mount", "-o", "remount,bind,ro", str(mount)]):
            if subprocess.run(args, capture_output=True).returncode:
                subprocess.run(["umount", str(mount)], capture_output=True)
                pytest.skip("no read-only mount here (not allowed to mount, and root ignores file modes)")
        made.append(("mount", mount))
        return mount

    yield make
    for kind, path in made:
        if kind == "mount":
            subprocess.run(["umount", str(path)], capture_output=True)
        else:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)


def test_resuming_a_run_on_a_read_only_disk_is_one_line(finished_run, read_only, capfd):
    run_dir = read_only(finished_run)
    before = _snapshot(run_dir)
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 1
    line = _one_line(capfd.readouterr().err)
    assert line == (f"nettrain: cannot write into {run_dir}: Read-only file system; a run needs its dir writable (for a "
                    f"resume, copy the run somewhere writable and resume the copy)") or "Permission denied" in line
    assert _snapshot(run_dir) == before


def test_a_log_file_the_disk_refuses_ends_the_file_not_the_run(tmp_path, monkeypatch, capfd):
    import logging

    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logging.FileHandler, "_open", full)
    run_dir = tmp_path / "run"
    assert run_in_process("train", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", *SMALL) == 0
    assert metrics(run_dir)["status"] == "completed"
    err = [line for line in capfd.readouterr().err.splitlines() if "train.log" in line]
    assert err == [f"nettrain: cannot write {run_dir / 'train.log'} (No space left on device); the log goes on on the "
                   f"console only"]
