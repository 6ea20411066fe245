"""`model.memory=true`: an MLP on a table remembers its training rows, so a row it trained on answers
as it did there, without the network over-training to recall it; the memory travels in the checkpoint."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from conftest import history, metrics, nettrain, run_in_process, train
from datagen import repeated_rows
from nettrain.inference.load import load_model
from nettrain.models.memory import Memory


def memory(rows, targets, classes=2, regression=False):
    m = Memory(len(rows[0]), classes, regression)
    m.remember(torch.tensor(rows, dtype=torch.float32), torch.tensor(targets))
    return m


def test_a_remembered_row_votes_for_its_label_and_a_far_row_adds_nothing():
    m = memory([[0.0, 0.0], [5.0, 5.0]], [0, 1]).eval()
    votes = m(torch.tensor([[0.0, 0.0], [10.0, -10.0]]), torch.zeros(2, 2))
    assert votes[0].tolist() == pytest.approx([math.e, 0.0]) and votes[1].abs().max() < 1e-6


def test_in_training_a_row_leaves_out_its_own_vote_but_not_its_copys():
    m = memory([[0.0, 0.0], [0.0, 0.0], [3.0, 3.0]], [1, 1, 0]).train()
    votes = m(torch.tensor([[3.0, 3.0], [0.0, 0.0]]), torch.zeros(2, 2))
    assert votes[0].abs().max() < 1e-6                      # alone in memory: nothing to recall
    assert votes[1].tolist() == pytest.approx([0.0, math.e])  # its copy still answers


def test_a_row_leaves_out_its_own_vote_where_matmuls_round_like_tf32(monkeypatch):
    # On a GPU the ranking matmul may run in TF32 (~1e-3 relative): a distance taken from it would put a
    # row ~0.01 from itself, and the row would vote for its own label in training.
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: addmm(*a, **k) + 0.05)
    m = memory([[1.0, 2.0], [3.0, 3.0]], [1, 0]).train()
    assert m(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2)).abs().max() < 1e-6


def test_a_memory_of_many_rows_is_ranked_in_slices_with_the_same_answer(monkeypatch):
    torch.manual_seed(0)
    m = memory(torch.randn(1000, 4).tolist(), torch.randint(0, 3, (1000,)).tolist(), classes=3).eval()
    x, out = torch.randn(16, 4), torch.randn(16, 3)
    whole = m(x, out)
    scored, addmm = [], torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: scored.append(addmm(*a, **k)) or scored[-1])
    monkeypatch.setattr("nettrain.models.memory.SLICE_ROWS", 70)  # 15 slices, the last of 20 rows
    assert torch.allclose(m(x, out), whole, atol=1e-6)
    assert max(s.shape[1] for s in scored) == 70 and len(scored) == 15  # never a [batch, 1000] matrix


def test_for_a_number_the_output_averages_the_network_and_the_near_rows():
    m = memory([[0.0], [9.0]], [10.0, -4.0], regression=True).eval()
    out = m(torch.tensor([[0.0], [100.0]]), torch.tensor([[1.0], [2.0]]))
    assert out[0].item() == pytest.approx((1 + math.e * 10) / (1 + math.e)) and out[1].item() == pytest.approx(2.0)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_table_of_repeated_rows_is_recalled_with_memory_and_not_without(tmp_path, task):
    path = repeated_rows(tmp_path / "rows.csv", task=task)
    common = ["data=csv", f"data.path={path}", "data.target=target", "trainer.max_epochs=2", "model.dropout=0",
              *(["loss=mse"] if task == "regression" else [])]
    with_memory = train(tmp_path, *common, "model.memory=true", name="memory")
    without = train(tmp_path, *common, name="plain")
    if task == "classification":
        assert metrics(with_memory)["best"]["val_accuracy"] >= 0.95 > 0.7 > metrics(without)["best"]["val_accuracy"]
    else:
        assert metrics(with_memory)["best"]["val_rmse"] < 0.25 * metrics(without)["best"]["val_rmse"]

    assert "remembers 192 training rows (model.memory)" in (with_memory / "train.log").read_text()
    # eval and predict need nothing but the checkpoint: it holds the rows.
    assert run_in_process("eval", f"ckpt={with_memory}") == 0
    result = json.loads((with_memory / "eval" / "val" / "metrics.json").read_text())
    key = "accuracy" if task == "classification" else "rmse"
    assert result[key] == pytest.approx(metrics(with_memory)["best"][f"val_{key}"], rel=1e-5)
    ckpt = torch.load(with_memory / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["model"]["memory.rows"].shape == (192, 3)  # the 80 % of 240 rows training saw


def test_predict_recalls_a_row_seen_in_training(tmp_path, capsys):
    path = repeated_rows(tmp_path / "rows.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=target", "trainer.max_epochs=1",
                    "model.memory=true")
    table = pd.read_csv(path)
    table.head(20).drop(columns="target").to_csv(tmp_path / "new.csv", index=False)
    capsys.readouterr()
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={tmp_path / 'new.csv'}", "format=json") == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [p["prediction"] for p in predictions] == table.head(20)["target"].tolist()


def test_resume_with_memory_is_bit_identical(tmp_path):
    path = repeated_rows(tmp_path / "rows.csv")
    args = ["data=csv", f"data.path={path}", "data.target=target", "model.memory=true"]
    whole = train(tmp_path, *args, "trainer.max_epochs=3", name="whole")
    halted = train(tmp_path, *args, "trainer.max_epochs=2", name="halted")
    assert run_in_process("train", f"resume={halted}", "trainer.max_epochs=3") == 0
    assert history(halted) == history(whole)
    ours, theirs = (torch.load(r / "checkpoints" / "last.pt", weights_only=True)["model"] for r in (halted, whole))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_fine_tuning_remembers_the_new_rows_not_the_old(tmp_path):
    source = train(tmp_path, "data=csv", f"data.path={repeated_rows(tmp_path / 'a.csv')}", "data.target=target",
                   "trainer.max_epochs=1", "model.memory=true", name="source")
    new = repeated_rows(tmp_path / "b.csv", unique=20, seed=1)
    tuned = train(tmp_path, "data=csv", f"data.path={new}", "data.target=target", "trainer.max_epochs=1",
                  "model.memory=true", f"model.init_from={source}", name="tuned")
    rows = torch.load(tuned / "checkpoints" / "best.pt", weights_only=True)["model"]["memory.rows"]
    assert rows.shape == (64, 3)  # 80 % of b.csv's 80 rows


@pytest.mark.parametrize("source_memory, memory, said", [
    ("true", "false", "its memory of rows is left (model.memory=false)"),
    ("false", "true", "the memory (model.memory=true) starts afresh"),
])
def test_fine_tuning_moves_the_network_to_or_from_a_model_with_a_memory(tmp_path, source_memory, memory, said):
    args = ["data=csv", f"data.path={repeated_rows(tmp_path / 'a.csv')}", "data.target=target", "trainer.max_epochs=1"]
    source = train(tmp_path, *args, f"model.memory={source_memory}", name="source")
    tuned = train(tmp_path, *args, f"model.memory={memory}", f"model.init_from={source}", name="tuned")
    assert said in (tuned / "train.log").read_text()
    keys = torch.load(tuned / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert ("memory.rows" in keys) == (memory == "true")


def test_memory_without_a_table_or_over_its_size_is_one_line_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    assert run_in_process("train", "model.memory=true", "trainer.max_epochs=1") == 2  # digits: images
    assert "invalid model.memory=True: it remembers the rows of a table (data=csv)" in capsys.readouterr().err
    assert run_in_process("train", "model.memory=maybe") == 2
    assert "invalid model.memory='maybe': allowed: true, false" in capsys.readouterr().err
    monkeypatch.setattr("nettrain.models.memory.MAX_VALUES", 100)
    path = repeated_rows(tmp_path / "rows.csv")
    assert run_in_process("train", "data=csv", f"data.path={path}", "data.target=target", "model.memory=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("192 training rows x (3 inputs + 3 target values) is over the 100 values a memory holds; "
                            "allowed for this data: model.memory=false")
    assert not list((tmp_path / "outputs").glob("*/*"))  # no run dir left


def test_the_onnx_export_recalls_the_rows_as_pytorch_does(tmp_path):
    import onnxruntime

    path = repeated_rows(tmp_path / "rows.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=target", "trainer.max_epochs=1",
                    "model.memory=true")
    assert run_in_process("export", f"ckpt={run_dir}", "format=onnx") == 0
    loaded = load_model(run_dir)
    rows = loaded.model.memory.rows[:7]  # copies weigh in: the memory's part of the graph is what is checked
    session = onnxruntime.InferenceSession(str(run_dir / "export" / "best.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: rows.numpy()})
    with torch.inference_mode():
        ours = loaded.model(rows)
    assert (ours - loaded.model.head(loaded.model.backbone(rows))).abs().max() > 1  # the memory answered
    assert (torch.from_numpy(onnx_out) - ours).abs().max() <= 1e-4


def test_the_torchscript_export_of_a_memory_is_quiet(tmp_path):
    path = repeated_rows(tmp_path / "rows.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=target", "trainer.max_epochs=1",
                    "model.memory=true")
    err = nettrain("export", f"ckpt={run_dir}", "format=torchscript", cwd=tmp_path).stderr  # as a shell shows it
    # The data's lines, the check's, the figures' table and the JSON's: no tracer warning among them.
    assert "Warning" not in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("preprocessing, class names and figures:"), err


@pytest.mark.parametrize("key, cut", [("memory.rows", (slice(None), slice(0, 2))), ("memory.targets", slice(0, 10)),
                                      ("head.1.weight", slice(0, 1))])
def test_a_checkpoint_with_weights_cut_to_another_shape_is_one_line_to_predict_and_resume(tmp_path, capsys, key, cut):
    path = repeated_rows(tmp_path / "rows.csv")
    run_dir = train(tmp_path, "data=csv", f"data.path={path}", "data.target=target", "trainer.max_epochs=1",
                    "model.memory=true")
    for name in ("best.pt", "last.pt"):
        file = run_dir / "checkpoints" / name
        ckpt = torch.load(file, weights_only=True)
        ckpt["model"][key] = ckpt["model"][key][cut].clone()
        torch.save(ckpt, file)
    capsys.readouterr()
    assert run_in_process("predict", f"ckpt={run_dir}", f"input={path}") == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert f"best.pt into mlp: size mismatch for {key}: copying a param with shape" in error
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 2
    err = capsys.readouterr().err  # after the data's own warnings
    assert f"last.pt into the run's model: size mismatch for {key}" in err.strip().splitlines()[-1]
    assert "Traceback" not in err and metrics(run_dir)["epochs"] == 1
