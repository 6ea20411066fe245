"""Every bad input ends with exit code 2 and one line naming the key, the value and what is allowed,
before any work starts, leaving no run dir behind."""

from __future__ import annotations

import pytest

from conftest import nettrain, run_in_process

BAD_INPUTS = [
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1: must be a number > 0"),
    (["optimizer.lr=0"], "optimizer.lr=0: must be a number > 0"),
    (["optimizer.lr=fast"], "optimizer.lr='fast': must be a number > 0"),
    (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    (["data.batch_size=1.5"], "data.batch_size=1.5: must be an integer >= 1"),
    (["model.dropout=1.0"], "model.dropout=1.0: must be a number in [0, 1)"),
    (["model.dropout=-0.2"], "model.dropout=-0.2: must be a number in [0, 1)"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1"),
    (["model=lstm"], "unknown model=lstm; allowed: bag, cnn, googlenet, gpt, hf, inception_v3"),
    (["data=imagenet"], "unknown data=imagenet; did you mean imagefolder? allowed:"),
    (["optimizer=lion"], "unknown optimizer=lion; allowed: adam, adamw, rmsprop, sgd"),
    (["scheduler=linear"], "unknown scheduler=linear; allowed:"),
    (["loss=hinge"], "unknown loss=hinge; allowed: bce, cross_entropy, custom, mse"),
    (["data=imagefolder"], "missing data.root: data=imagefolder needs it"),
    (["data=imagefolder", "data.root=/no/such/folder"], "data.root='/no/such/folder': no such directory"),
    (["trainer.device=cuda"], "trainer.device='cuda': no CUDA GPU is available here"),
    (["trainer.device=tpu"], "trainer.device='tpu': allowed: auto, cpu, cuda, cuda:N"),
    (["trainer.precision=16"], "trainer.precision=16: fp16 needs a CUDA GPU"),
    (["trainer.precision=fp64"], "trainer.precision='fp64': allowed: auto, 32, bf16, 16"),
    (["trainer.max_epoch=3"], "trainer.max_epoch"),
    (["model.activation=swish"], "model.activation='swish': allowed: relu, gelu, tanh, sigmoid, silu"),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
    (["early_stopping.monitor=val_f2"], "early_stopping.monitor='val_f2': allowed: auto, val_loss"),
    (["model.init_from=/no/such.pt"], "model.init_from='/no/such.pt': no such file or directory"),
    (["resume=/no/such/run"], "resume='/no/such/run': no such file or directory"),
]


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[" ".join(o) for o, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(tmp_path, capfd, overrides, message):
    assert run_in_process("train", *overrides) == 2
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] if (tmp_path / "outputs").exists() else True


def test_config_errors_answer_without_a_traceback_or_torch(tmp_path):
    proc = nettrain("train", "optimizer.lr=-1", cwd=tmp_path, check=False,
                    env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid optimizer.lr=-1" in proc.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))


@pytest.mark.parametrize("command", ["train", "check-data", "lr-find"])
def test_a_config_file_that_is_not_yaml_is_one_line_naming_the_file_and_line(tmp_path, capfd, command):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    bad = tmp_path / "conf" / "model" / "tiny.yaml"
    bad.write_text("_target_: tinynet.TinyNet\nwidths: [16, 32\ndropout: 0.1\n")
    assert run_in_process(command, "--config-dir", str(tmp_path / "conf"), "model=tiny") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"nettrain: invalid YAML in {bad}, line 3, column 8: expected ',' or ']', but got ':' "
                   f"(while parsing a flow sequence begun on line 2)"]
