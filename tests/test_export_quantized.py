"""`nettrain export quantize=int8|fp16`, as docs/edge.md shows it: static int8 for a CNN (calibrated on the run's
training data), dynamic for an MLP and a text model, fp16; the figures in the .json; the refusal of an export
that loses more than export.max_drop, and export.force; eval and predict on the .onnx file and its .json alone;
the bad inputs, each one line."""

from __future__ import annotations

import dataclasses
import json
import shutil

import onnx
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from test_text import TINY, text_args, texts_csv

import nettrain.export.formats
import nettrain.export.measure
from conftest import run_in_process, train
from datagen import image_folder
from nettrain.config.registry import MODELS
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.evaluation.checkpoint import evaluate_checkpoint
from nettrain.inference.predict import predict
from nettrain.records.checkpoint import load_checkpoint


@pytest.fixture(autouse=True)
def _short_timings(monkeypatch):
    """The latency and throughput are timed for a few calls, not a second per file: these tests check the
    figures are there and consistent, scripts/bench_export.py measures them."""
    monkeypatch.setattr(nettrain.export.measure, "LATENCY_SECONDS", 0.0)
    monkeypatch.setattr(nettrain.export.measure, "MIN_RUNS", 3)
    monkeypatch.setattr(nettrain.export.measure, "WARMUP", 1)


def figures(path):
    info = json.loads(path.with_suffix(".json").read_text())
    return info, info["measured"]


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A small digits CNN: convolutions, batch norm, pooling, a linear head."""
    tmp = tmp_path_factory.mktemp("cnn")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, "model=cnn", "model.channels=[8,16]", "optimizer.lr=0.01", "trainer.max_epochs=3")


def test_int8_static_cnn_is_smaller_and_measured_and_its_labels_agree_with_pytorch(cnn_run, tmp_path, capsys):
    folder = tmp_path / "shipped"
    folder.mkdir()
    assert run_in_process("export", str(cnn_run), "quantize=int8", "export.calibration=4", f"output={folder}") == 0
    out, err = capsys.readouterr()
    model_file = folder / "best.int8.onnx"
    assert out.strip() == str(model_file) and sorted(p.name for p in folder.iterdir()) == ["best.int8.json", "best.int8.onnx"]
    info, m = figures(model_file)
    assert info["quantize"] == "int8" and info["quantization"]["method"] == "static"
    assert info["quantization"]["calibration"] == {"method": "percentile", "batches": 4, "samples": 4 * 64}
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(model_file)).graph.node)  # QDQ
    fp32, int8 = m["files"]["fp32 onnx"], m["files"]["int8 onnx"]
    assert int8["size_bytes"] == model_file.stat().st_size < 0.6 * fp32["size_bytes"]
    assert m["samples"] == 360 and fp32["accuracy"] == m["pytorch"]["accuracy"] and fp32["agreement"] == 1.0
    assert int8["drop"] == pytest.approx((m["pytorch"]["accuracy"] - int8["accuracy"]) * 100)
    for f in (fp32, int8):
        s = f["speed"]
        assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p95"] and s["throughput_per_s"] > 0
        assert s["threads"] == m["threads"] >= 1 and s["throughput_batch"] == 32
    assert "int8 onnx" in err and "p50 ms" in err and "360 samples" in err

    # The file alone, in nettrain eval: the recorded accuracy, and the checkpoint's label on >= 95 % of val.
    ours, theirs = evaluate_checkpoint(model_file, device="cpu"), evaluate_checkpoint(cnn_run, device="cpu")
    assert ours.metrics["accuracy"] == int8["accuracy"]
    agreement = float((ours.outputs.argmax(-1) == theirs.outputs.argmax(-1)).double().mean())
    assert agreement >= 0.95 and agreement == pytest.approx(int8["agreement"])


@pytest.fixture(scope="module")
def shipped(digits_run, tmp_path_factory):
    """The digits MLP exported in fp32 and int8 (dynamic) into a folder of their own, then its run dir removed:
    the files and their .json are all there is. Also the checkpoint's predictions, taken before, on PNGs."""
    tmp = tmp_path_factory.mktemp("shipped")
    run = shutil.copytree(digits_run, tmp / "run")
    folder = tmp / "model"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setattr(nettrain.export.measure, "LATENCY_SECONDS", 0.0)
        mp.setattr(nettrain.export.measure, "MIN_RUNS", 3)
        assert run_in_process("export", str(run), f"output={folder}") == 0
        assert run_in_process("export", str(run), "quantize=int8", f"output={folder}") == 0
    pngs = tmp / "pngs"
    pngs.mkdir()
    ckpt = load_checkpoint(run)
    cfg = OmegaConf.create(ckpt["config"])
    x = build_data(cfg.data, DataContext(seed=cfg.trainer.seed)).val.x[:40]
    pre = ckpt["spec"]["preprocessing"]
    for i, image in enumerate((x * pre["std"][0] + pre["mean"][0]).mul(255).round().clamp(0, 255).to(torch.uint8)):
        Image.fromarray(image[0].numpy(), mode="L").save(pngs / f"val{i:02d}.png")
    expected = predict(run, pngs, device="cpu")
    shutil.rmtree(run)
    return folder, pngs, expected


def test_dynamic_int8_mlp_figures(shipped):
    folder, _, _ = shipped
    info, m = figures(folder / "best.int8.onnx")
    assert info["quantization"]["method"] == "dynamic" and "calibration" not in info["quantization"]
    fp32, int8 = m["files"]["fp32 onnx"], m["files"]["int8 onnx"]
    assert int8["size_bytes"] < 0.35 * fp32["size_bytes"]  # 4-byte weights become 1-byte ones
    assert int8["agreement"] >= 0.98 and abs(int8["drop"]) <= 1.0
    assert figures(folder / "best.onnx")[1]["files"].keys() == {"fp32 onnx"}


def test_predict_and_eval_take_the_onnx_file_alone(shipped, tmp_path, capsys):
    folder, pngs, expected = shipped
    by_input = {p.input: p for p in expected.predictions}
    fp32 = predict(folder / "best.onnx", pngs, device="cpu")
    for p in fp32.predictions:  # the fp32 file computes what the checkpoint does: probabilities to 1e-4
        assert p.prediction == by_input[p.input].prediction
        assert max(abs(v - by_input[p.input].probabilities[c]) for c, v in p.probabilities.items()) <= 1e-4
    int8 = predict(folder / "best.int8.onnx", pngs, device="cpu")
    agree = sum(p.prediction == by_input[p.input].prediction for p in int8.predictions) / len(int8.predictions)
    assert len(int8.predictions) == 40 and agree >= 0.95  # the int8 file: the checkpoint's label on >= 95 %

    assert run_in_process("predict", str(folder / "best.int8.onnx"), f"input={pngs / 'val00.png'}", "format=json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["prediction"] == by_input[str(pngs / "val00.png")].prediction
    assert run_in_process("eval", str(folder / "best.int8.onnx"), f"output={tmp_path}", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == figures(folder / "best.int8.onnx")[1]["files"]["int8 onnx"]["accuracy"]
    assert report["checkpoint"] == str(folder / "best.int8.onnx") and (tmp_path / "metrics.json").is_file()


def test_an_onnx_file_without_its_json_or_damaged_is_one_line(shipped, tmp_path, capsys):
    folder, pngs, _ = shipped
    alone = tmp_path / "alone.onnx"
    shutil.copy(folder / "best.onnx", alone)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07not onnx at all")
    shutil.copy(folder / "best.json", tmp_path / "broken.json")
    crafted = tmp_path / "crafted.onnx"  # a .json made to allocate a billion-pixel image per input
    shutil.copy(folder / "best.onnx", crafted)
    info = json.loads((folder / "best.json").read_text())
    info["spec"]["preprocessing"]["image_size"] = 10**9
    (tmp_path / "crafted.json").write_text(json.dumps(info))
    for args, message in [
        (["predict", str(alone), f"input={pngs}"], "no alone.json beside it"),
        (["predict", str(broken), f"input={pngs}"], "not a complete ONNX file onnxruntime can run"),
        (["eval", str(tmp_path / "missing.onnx")], "no such exported model"),
        (["predict", str(folder / "best.onnx"), f"input={pngs}", "device=cuda"], "an exported .onnx file runs on the CPU"),
        (["export", str(folder / "best.onnx")], "this is an exported file already"),
        (["predict", str(crafted), f"input={pngs}"], "invalid image preprocessing in the data spec: image_size=1000000000"),
        (["eval", str(crafted)], "invalid image preprocessing in the data spec: image_size=1000000000"),
    ]:
        assert run_in_process(*args) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (args, err)


def test_fp16_halves_the_weights_and_keeps_the_labels(digits_run, tmp_path):
    assert run_in_process("export", str(digits_run), "quantize=fp16", f"output={tmp_path}") == 0
    info, m = figures(tmp_path / "best.fp16.onnx")
    fp32, fp16 = m["files"]["fp32 onnx"], m["files"]["fp16 onnx"]
    assert info["quantize"] == "fp16" and info["dtype"] == "float32"  # inputs and outputs stay float32
    assert fp16["size_bytes"] < 0.6 * fp32["size_bytes"] and fp16["agreement"] >= 0.99


def test_int8_dynamic_text_model_predicts_and_evaluates_alone(tmp_path, capsys):
    data = texts_csv(tmp_path / "train.csv", per_class=40)
    run = train(tmp_path, *text_args(data), "model=transformer", *TINY, "trainer.max_epochs=4")
    assert run_in_process("export", str(run), "quantize=int8", f"output={tmp_path / 'shipped'}") == 0
    model_file = tmp_path / "shipped" / "best.int8.onnx"
    info, m = figures(model_file)
    assert info["quantization"]["method"] == "dynamic" and (tmp_path / "shipped" / "best.tokenizer.json").is_file()
    int8, fp32 = m["files"]["int8 onnx"], m["files"]["fp32 onnx"]
    assert int8["agreement"] >= 0.9 and int8["size_bytes"] < fp32["size_bytes"]
    text = "text=the atm swallowed my card"
    capsys.readouterr()
    assert run_in_process("predict", str(run), text, "format=json") == 0
    [expected] = json.loads(capsys.readouterr().out)
    shutil.rmtree(run)
    assert run_in_process("predict", str(model_file), text, "format=json") == 0
    assert json.loads(capsys.readouterr().out)[0]["prediction"] == expected["prediction"] == "card"
    assert run_in_process("eval", str(model_file), "--json", f"output={tmp_path / 'eval'}") == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == int8["accuracy"]


def _constant_quantizer(source, target, *args, **kwargs):
    """A quantizer gone wrong: every float weight zero, so every input gets the same logits (one class)."""
    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor) * 0, tensor.name))
    onnx.save(model, str(target))
    return {"method": "broken"}


def test_an_export_losing_more_than_max_drop_is_refused_and_left_aside_unless_forced(digits_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(nettrain.export.formats, "quantize_onnx", _constant_quantizer)
    assert run_in_process("export", str(digits_run), "quantize=int8", f"output={tmp_path}") == 1
    err = capsys.readouterr().err.strip().splitlines()
    refused = tmp_path / "best.int8.refused.onnx"
    assert "the int8 onnx export is refused: its val accuracy" in err[-1] and "points below PyTorch's" in err[-1]
    assert "(export.max_drop=1)" in err[-1] and f"left aside as {refused}" in err[-1] and "export.force=true" in err[-1]
    assert any(line.startswith("int8 onnx") for line in err)  # the figures, printed before the refusal
    assert not (tmp_path / "best.int8.onnx").exists() and refused.is_file()
    info, m = figures(refused)
    assert m["refused"] is True and m["files"]["int8 onnx"]["drop"] > 50 and info["model_file"] == refused.name

    assert run_in_process("export", str(digits_run), "quantize=int8", "export.force=true", f"output={tmp_path}") == 0
    info, m = figures(tmp_path / "best.int8.onnx")
    assert m["forced"] is True and m["refused"] is False and m["files"]["int8 onnx"]["drop"] > 50
    assert not refused.exists() and not refused.with_suffix(".json").exists()  # the refused try is gone


def test_a_quantizer_failure_or_a_model_without_an_int8_method_is_one_line(digits_run, tmp_path, monkeypatch, capsys):
    import onnxruntime.quantization

    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported operator: FancyOp\nmore detail")

    folder = tmp_path / "shipped"
    folder.mkdir()
    with monkeypatch.context() as mp:
        mp.setattr(onnxruntime.quantization, "quantize_dynamic", unsupported)
        assert run_in_process("export", str(digits_run), "quantize=int8", f"output={folder}") == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("cannot quantize this model to int8 (dynamic): Unsupported operator: FancyOp")
    assert list(folder.iterdir()) == []  # nothing written, no temp files left

    assert run_in_process("export", str(digits_run), "quantize=int8", "export.keep_float=[Gemn]", f"output={folder}") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("invalid export.keep_float=['Gemn']: this model has no Gemn operator; its operators: Gemm, Relu, Reshape")
    assert list(folder.iterdir()) == []

    monkeypatch.setitem(MODELS.entries, "mlp", dataclasses.replace(MODELS.entries["mlp"], quantize=None))
    assert run_in_process("export", str(digits_run), "quantize=int8", f"output={tmp_path}") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot quantize model mlp to int8" in err and "export.method=static" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["quantize=int8", "format=torchscript"], "invalid quantize='int8': quantized files are ONNX"),
    (["quantize=int4"], "invalid quantize='int4': allowed: none, int8, fp16"),
    (["export.calibraton=4"], "unknown argument export.calibraton=...; did you mean calibration?"),
    (["export.calibration=0"], "invalid export.calibration=0: must be an integer >= 1"),
    (["export.max_drop=-1"], "invalid export.max_drop=-1: must be a number >= 0"),
    (["export.force=maybe"], "invalid export.force='maybe': allowed: true, false"),
    (["export.method=fast"], "invalid export.method='fast': allowed: static, dynamic"),
    (["export.calibration_method=best"], "invalid export.calibration_method='best': allowed: percentile, minmax, entropy"),
    (["export.per_channel=maybe"], "invalid export.per_channel='maybe': allowed: true, false"),
    (["export.activations=int4"], "invalid export.activations='int4': allowed: uint8, int8"),
    (["export.keep_float=[1]"], "invalid export.keep_float=[1]: must be a list of ONNX operator types"),
    (["quantize=int8", "data.rooot=x"], "unknown data.rooot: the checkpoint's data=digits has"),
])
def test_bad_export_arguments_are_one_line_and_exit_2(digits_run, args, message, capsys):
    assert run_in_process("export", str(digits_run), *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_run_with_no_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert run_in_process("export", str(tmp_path / "run"), "quantize=int8") == 2
    assert "no checkpoint in" in capsys.readouterr().err


def test_data_moved_away_calibration_refused_then_found_with_data_root_and_eval_alone(tmp_path, capsys):
    photos = image_folder(tmp_path / "photos", per_class=6, classes=("cat", "dog", "fox"))
    run = train(tmp_path, "data=imagefolder", f"data.root={photos}", "data.image_size=16", "model=cnn",
                "model.channels=[8]", "data.batch_size=6", "trainer.max_epochs=1")
    moved = photos.rename(tmp_path / "moved")
    capsys.readouterr()
    assert run_in_process("export", str(run), "quantize=int8") == 2
    err = capsys.readouterr().err.strip()
    assert "cannot calibrate the int8 export on the run's training data:" in err and "data.root=DIR" in err
    assert len(err.splitlines()) == 1 and not (run / "export").exists()

    # fp32 needs no calibration: exported, its accuracy not measured (said, and in the .json)
    assert run_in_process("export", str(run)) == 0
    assert "accuracy is not measured" in capsys.readouterr().err
    _, m = figures(run / "export" / "best.onnx")
    assert "not measured" in m["not_measured"] and "accuracy" not in m["files"]["fp32 onnx"]

    # data.root= where the photos are now: calibrated on them (a tiny val split: any drop allowed)
    assert run_in_process("export", str(run), "quantize=int8", f"data.root={moved}", "export.max_drop=100") == 0
    _, m = figures(run / "export" / "best.int8.onnx")
    assert m["samples"] == 18 and m["files"]["int8 onnx"]["accuracy"] is not None
    capsys.readouterr()
    assert run_in_process("eval", str(run), f"data.root={moved}", "--json") == 0
    capsys.readouterr()
    assert run_in_process("eval", str(run / "export" / "best.int8.onnx"), f"data.root={moved}", "--json") == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 18
    # The file's figures beside the checkpoint's, never over them (each named by the data it measured).
    (own,) = [p for p in (run / "eval").iterdir() if p.name.startswith("val-")]
    assert json.loads((own / "metrics.json").read_text())["checkpoint"].endswith("best.pt")
    assert (run / "eval" / "best.int8.onnx" / own.name / "metrics.json").is_file()
