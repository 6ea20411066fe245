"""`nettrain predict`, as the docs show it: images, folders, CSV rows; table, JSON, CSV output."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import run_in_process, save_malicious_checkpoint, train
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.evaluation.checkpoint import evaluate_checkpoint
from nettrain.records.checkpoint import load_checkpoint

SAMPLES = 40


@pytest.fixture(scope="module")
def run_dir(digits_run):
    return digits_run


@pytest.fixture(scope="module")
def val_pngs(run_dir, tmp_path_factory):
    """The first SAMPLES val images as 8x8 grayscale PNGs in a folder tree, plus a corrupt PNG and
    a text file; the images undo the digits normalization, as a camera would have saved them."""
    ckpt = load_checkpoint(run_dir)
    cfg = OmegaConf.create(ckpt["config"])
    x = build_data(cfg.data, DataContext(seed=cfg.trainer.seed)).val.x[:SAMPLES]
    pre = ckpt["spec"]["preprocessing"]
    pixels = (x * pre["std"][0] + pre["mean"][0]).mul(255).round().clamp(0, 255).to(torch.uint8)
    folder = tmp_path_factory.mktemp("pngs")
    (folder / "more").mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image[0].numpy(), mode="L").save(folder / ("more" if i % 2 else "") / f"val{i:02d}.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (folder / "notes.txt").write_text("not an image, and not an image extension: ignored")
    return folder


def _index(name: str) -> int:
    return int(re.search(r"val(\d+)\.png", name).group(1))


def test_predict_folder_as_json_probabilities_sum_to_1_and_match_eval(run_dir, val_pngs, capsys):
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={val_pngs}", "format=json") == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)  # stdout is only the JSON
    assert len(rows) == SAMPLES
    assert "1 of 41 input(s) could not be read" in err and "corrupt.png" in err

    evaluation = evaluate_checkpoint(run_dir, "val", device="cpu")
    eval_probabilities = evaluation.outputs[:SAMPLES].softmax(-1)
    for row in rows:
        assert set(row) == {"input", "prediction", "probabilities"}
        probabilities = row["probabilities"]
        assert len(probabilities) == 10 and sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert list(probabilities.values()) == sorted(probabilities.values(), reverse=True)
        assert row["prediction"] == next(iter(probabilities))
        expected = eval_probabilities[_index(row["input"])]
        assert row["prediction"] == str(expected.argmax().item())
        # The PNGs are 8-bit: they differ from the in-memory digits by at most half a grey level.
        assert [probabilities[str(c)] for c in range(10)] == pytest.approx(expected.tolist(), abs=0.02)


def test_predict_one_image_prints_classes_with_percentages(run_dir, val_pngs, tmp_path, capsys):
    photo = tmp_path / "#1e3 [scan].png"  # a name YAML or rich markup would mangle
    photo.write_bytes((val_pngs / "val00.png").read_bytes())
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={photo}", "top_k=2") == 0
    out = capsys.readouterr().out
    (shown,) = [line for line in out.splitlines() if "#1e3 [scan].png" in line]
    assert len(re.findall(r"\b\d \d+\.\d%", shown)) == 2  # "7 98.1%  1 1.2%"


def test_predict_csv_format_has_a_column_per_class(run_dir, val_pngs, capsys):
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={val_pngs / 'more'}", "format=csv") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == SAMPLES // 2
    assert list(rows[0]) == ["input", "prediction", *map(str, range(10))]
    assert sum(float(rows[0][str(c)]) for c in range(10)) == pytest.approx(1.0, abs=1e-4)


def test_predict_csv_rows_of_a_tabular_model(tmp_path, capsys):
    pytest.importorskip("nettrain.data.tabular")
    rows = [{"temperature": 20 + i % 30, "machine": "ab"[i % 2], "failed": "yes" if i % 30 > 20 else "no"}
            for i in range(200)]
    data = tmp_path / "sensors.csv"
    with open(data, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run_dir = train(tmp_path, "data=csv", f"data.path={data}", "data.target=failed", "data.categorical=[machine]",
                    "trainer.max_epochs=2")
    new = tmp_path / "new.csv"
    new.write_text("temperature,machine\n45,a\nhot,b\n21,b\n")
    capsys.readouterr()  # training's own warnings
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={new}", "format=json") == 0
    out, err = capsys.readouterr()
    predictions = json.loads(out)
    assert [p["input"] for p in predictions] == [f"{new}:2", f"{new}:4"]  # FILE:LINE; line 3 is unreadable
    assert "1 of 3 input(s) could not be read" in err and "'hot' on line 3" in err
    assert "the model was trained on numbers there: fix or remove the row" in err  # not how to train another
    assert "data." not in err
    for p in predictions:
        assert set(p["probabilities"]) == {"no", "yes"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    (tmp_path / "header.csv").write_text("temperature,machine\n")
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={tmp_path / 'header.csv'}") == 2
    assert capsys.readouterr().err.strip().endswith("header.csv has no rows, only a header")




@pytest.mark.parametrize("args, message", [
    (["input=missing.png"], "invalid input='missing.png': no such file or directory"),
    (["input=IMAGES", "top_k=0"], "invalid top_k=0: must be an integer >= 1"),
    (["input=IMAGES", "top_k=-3"], "invalid top_k=-3: must be an integer >= 1"),
    (["input=IMAGES", "top_k=two"], "invalid top_k='two': must be an integer >= 1"),
    (["input=IMAGES", "batch_size=0"], "invalid batch_size=0"),
    (["input=IMAGES", "format=xml"], "invalid format='xml': allowed: table, json, csv"),
    (["input=IMAGES", "color=red"], "unknown argument color"),
    (["input=IMAGES/corrupt.png"], "cannot read image"),
    (["input=IMAGES/notes.txt"], "cannot read image"),
    (["input=EMPTY"], "no images in this folder"),
    (["input=ROWS.csv"], "this model takes images"),
    ([], "missing input="),
])
def test_predict_bad_inputs_end_with_one_line_and_exit_2(run_dir, val_pngs, tmp_path, capsys, args, message):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "ROWS.csv").write_text("a,b\n1,2\n")
    args = [a.replace("IMAGES", str(val_pngs)) for a in args]
    assert run_in_process("predict", f"ckpt={run_dir}", *args) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_predict_refuses_missing_and_malicious_checkpoints(val_pngs, tmp_path, capsys):
    assert run_in_process("predict", f"ckpt={tmp_path / 'none.pt'}", f"input={val_pngs}") == 2
    assert "no such checkpoint" in capsys.readouterr().err
    marker = tmp_path / "pwned"
    save_malicious_checkpoint(tmp_path / "evil.pt", marker)
    assert run_in_process("predict", f"ckpt={tmp_path / 'evil.pt'}", f"input={val_pngs}") == 2
    assert "refusing to load" in capsys.readouterr().err and not marker.exists()
