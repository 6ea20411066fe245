"""`nettrain export`, as the docs show it: ONNX and TorchScript, checked against PyTorch."""

from __future__ import annotations

import json

import pytest
import torch

import nettrain.export.formats
from conftest import run_in_process, train
from nettrain.inference.load import load_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small digits CNN (convolutions, BatchNorm, pooling: the ops an export must get right)."""
    tmp = tmp_path_factory.mktemp("digits")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, "model=cnn", "model.channels=[8,16]", "trainer.max_epochs=1")


def test_onnx_export_round_trip_matches_pytorch_at_any_batch_size(run_dir, capsys):
    import onnxruntime

    assert run_in_process("export", f"ckpt={run_dir}", "format=onnx") == 0
    out, err = capsys.readouterr()
    model_file = run_dir / "export" / "best.onnx"
    assert out.strip() == str(model_file) and "max abs diff" in err

    info = json.loads(model_file.with_suffix(".json").read_text())
    loaded = load_model(run_dir)
    assert info["preprocessing"] == loaded.spec.preprocessing == {"kind": "image", "image_size": 8, "channels": 1,
                                                                   "mean": [0.3053], "std": [0.376]}
    assert info["class_names"] == [str(i) for i in range(10)] and info["input_shape"] == ["batch", 1, 8, 8]
    assert info["max_abs_diff"] <= 1e-4

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert model_input.name == info["input_name"] and isinstance(model_input.shape[0], str)  # dynamic batch
    for batch in (1, 7):
        x = torch.randn(batch, 1, 8, 8)
        (onnx_out,) = session.run([info["output_name"]], {info["input_name"]: x.numpy()})
        with torch.inference_mode():
            assert (torch.from_numpy(onnx_out) - loaded.model(x)).abs().max() <= 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_loads_and_matches(run_dir, tmp_path):
    output = tmp_path / "model.pt"
    assert run_in_process("export", f"ckpt={run_dir / 'checkpoints' / 'best.pt'}", "format=torchscript",
                          f"output={output}") == 0
    info = json.loads((tmp_path / "model.json").read_text())
    assert info["format"] == "torchscript" and info["model_file"] == "model.pt"
    scripted = torch.jit.load(str(output))
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert (scripted(x) - load_model(run_dir).model(x)).abs().max() <= 1e-4


def test_an_export_that_fails_the_check_writes_nothing_and_exits_1(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nettrain.export.formats, "TOLERANCE", -1.0)  # no export can pass
    assert run_in_process("export", f"ckpt={run_dir}", "format=torchscript", f"output={tmp_path}") == 1
    assert "does not match the PyTorch model: max abs diff" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["format=tflite"], "invalid format='tflite': allowed: onnx, torchscript"),
    (["ckpt=missing.pt"], "no such checkpoint"),
    (["output"], "expected key=value arguments"),
    (["opset=18"], "unknown argument opset"),
])
def test_export_bad_arguments_end_with_one_line_and_exit_2(run_dir, capsys, args, message):
    assert run_in_process("export", f"ckpt={run_dir}", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
