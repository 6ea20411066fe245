"""`nettrain update RUN`, as docs/updating.md shows it: a class left out of training learned later from feedback
records and from new data, the old classes kept, the output layer grown with the old weights intact, the gate
rejecting a poisoned update (unless forced), the lineage recorded, RUN untouched, and every bad input one line."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import metrics, run_in_process, train
from datagen import image_folder
from nettrain.data.spec import DataSpec
from nettrain.models.build import build_model
from nettrain.models.weights import prepare
from nettrain.records.checkpoint import load_checkpoint
from nettrain.serving.feedback import Feedback, FeedbackStore

CENTRES = {"a": (0.0, 0.0), "b": (4.0, 0.0), "c": (0.0, 4.0)}
TABLE = ["data=csv", "data.target=label", "model.hidden=[32]", "trainer.max_epochs=6", "optimizer.lr=0.01"]


def blobs(cls: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    x, y = CENTRES[cls]
    return [{"x": round(x + rng.normal(0, 0.7), 4), "y": round(y + rng.normal(0, 0.7), 4), "label": cls} for _ in range(n)]


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...] = ("x", "y", "label")) -> Path:
    path.write_text(",".join(columns) + "\n" + "".join(",".join(str(r[c]) for c in columns) + "\n" for r in rows))
    return path


def give_feedback(run_dir: Path, records: list[tuple[str, object, object]]) -> Path:
    """Feedback as nettrain serve keeps it: (kind, input, label) records in RUN/feedback/*.jsonl."""
    store = FeedbackStore(run_dir)
    for i, (kind, raw, label) in enumerate(records):
        store.add(Feedback(f"{store.path.stem}-{i}", kind, raw, label))
    store.close()
    return store.path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def rows_of(cls: str, n: int, seed: int) -> list[tuple[str, dict, str]]:
    return [("tabular", {"x": r["x"], "y": r["y"]}, r["label"]) for r in blobs(cls, n, seed)]


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A table of classes a and b (class c is left out), and a run trained on it."""
    tmp = tmp_path_factory.mktemp("update")
    write_csv(tmp / "old.csv", blobs("a", 150, 1) + blobs("b", 150, 2))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, *TABLE, f"data.path={tmp / 'old.csv'}", name="parent")


@pytest.fixture
def run(parent, tmp_path):
    """A copy of the parent run, for a test to give feedback to."""
    return Path(shutil.copytree(parent, tmp_path / "RUN"))


def update(*args: str) -> int:
    return run_in_process("update", *args)


def test_a_class_left_out_is_learned_from_feedback_and_the_old_ones_kept(run, tmp_path, capsys):
    feedback = give_feedback(run, rows_of("c", 60, 3))
    before = snapshot(run)
    assert update(str(run), f"output={tmp_path / 'v2'}") == 0
    assert snapshot(run) == before  # RUN is only read
    out = capsys.readouterr().out
    assert "RUN's validation set" in out and "accepted" in out

    child = tmp_path / "v2"
    record = metrics(child)
    lineage, gate = record["lineage"], record["gate"]
    assert record["status"] == "completed" and gate["verdict"] == "accepted"
    assert lineage["parent"] == str(run) and lineage["classes"] == {"old": ["a", "b"], "new": ["c"]}
    assert lineage["learned_from"]["feedback"] | {"digest": None} == {
        "files": [feedback.name], "records": 60, "used": 60, "train": 48, "holdout": 12, "digest": None}
    fingerprints = lineage["data_fingerprints"]
    assert fingerprints["parent_trained_on"] == fingerprints["replayed"] and fingerprints["replayed"]["files"] == 1
    examples = lineage["examples"]  # all of RUN's 240 training rows in the pool; 4 of them per new example an epoch
    assert examples["replay_pool"] == 240 and examples["replayed_per_epoch"] == 8 * 48 * examples["repeats"]
    assert gate["before"]["new_classes"] == 0 and gate["after"]["new_classes"] >= 0.9
    assert gate["after"]["old"] >= gate["before"]["old"] - 0.01
    assert lineage["settings"]["distill"] == 0.5  # update.distill=auto: 0.5 for a classifier
    # A normal run: checkpoints, TensorBoard curves, Hydra's record, a log; eval and predict take it.
    assert (child / "checkpoints" / "best.pt").is_file() and list(child.glob("events.out.tfevents.*"))
    assert (child / ".hydra" / "config.yaml").is_file() and "head grown" in (child / "train.log").read_text()
    assert run_in_process("eval", str(child)) == 0
    write_csv(tmp_path / "ask.csv", blobs("c", 5, 9))
    capsys.readouterr()
    assert run_in_process("predict", f"ckpt={child}", f"input={tmp_path / 'ask.csv'}", "format=json") == 0
    assert [p["prediction"] for p in json.loads(capsys.readouterr().out)] == ["c"] * 5

    # An update of the update replays what the first one learned, with RUN's own data.
    give_feedback(child, rows_of("c", 10, 4))
    assert update(str(child), f"output={tmp_path / 'v3'}") == 0
    examples = metrics(tmp_path / "v3")["lineage"]["examples"]
    assert examples["from_earlier_updates"] == 60
    assert examples["old_validation"] == lineage["examples"]["old_validation"] + 12
    assert run_in_process("train", f"resume={tmp_path / 'v3'}") == 2  # its data was the update's: not resumed
    assert "is the run of a nettrain update" in capsys.readouterr().err


def test_new_data_teaches_a_class_with_its_columns_matched_by_name(run, tmp_path, capsys):
    rows = [r | {"note": "new"} for r in blobs("c", 60, 5) + blobs("a", 20, 6)]
    new = write_csv(tmp_path / "new.csv", rows, columns=("label", "note", "y", "x"))
    assert update(str(run), f"data.path={new}", "update.min_steps=40", "update.correct_prior=true",
                  f"output={tmp_path / 'v2'}", "--json") == 0
    record = metrics(tmp_path / "v2")
    printed = json.loads(capsys.readouterr().out)
    assert printed["lineage"] == record["lineage"] and printed["gate"] == record["gate"]
    assert record["lineage"]["classes"]["new"] == ["c"] and record["lineage"]["learned_from"]["data"]["train"] == 64
    assert len(record["lineage"]["prior_offsets"]) == 3  # the loss saw the logits offset by the classes' shares
    assert record["lineage"]["learned_from"]["data"]["fingerprint"]["files"] == 1
    assert record["gate"]["after"]["new_classes"] >= 0.9
    # RUN's statistics, not the new file's, encode the rows (the new file alone is off-centre).
    assert load_checkpoint(tmp_path / "v2")["spec"]["preprocessing"] == load_checkpoint(run)["spec"]["preprocessing"]


def test_the_output_layer_grows_and_the_old_classes_keep_their_weights(run):
    saved = load_checkpoint(run)
    cfg = OmegaConf.create(saved["config"]["model"] | {"init_from": str(run)})
    grown = DataSpec(**saved["spec"] | {"num_classes": 3, "class_names": ["a", "b", "c"]})
    model = build_model(cfg, grown)
    prepare(model, cfg, grown)
    head = model.head[1]
    assert head.weight.shape == (3, 32)
    assert torch.equal(head.weight[:2], saved["model"]["head.1.weight"])
    assert torch.equal(head.bias[:2], saved["model"]["head.1.bias"])
    assert all(torch.equal(v, saved["model"][f"backbone.{k}"]) for k, v in model.backbone.state_dict().items())


def test_the_gate_rejects_a_poisoned_update_unless_forced(run, tmp_path, capsys):
    poison = [("tabular", {"x": r["x"], "y": r["y"]}, "b") for r in blobs("a", 150, 7)]  # every a called b
    give_feedback(run, poison)
    assert update(str(run), "update.replay=0", "update.min_steps=40", f"output={tmp_path / 'bad'}") == 3
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("nettrain: update rejected: it forgot")
    record = metrics(tmp_path / "bad")
    assert record["status"] == "rejected" and record["gate"]["verdict"] == "rejected"
    assert record["gate"]["forgot"] > 1.0 and (tmp_path / "bad" / "checkpoints" / "best.pt").is_file()

    assert update(str(run), "update.replay=0", "update.min_steps=40", "update.force=true",
                  f"output={tmp_path / 'forced'}") == 0
    record = metrics(tmp_path / "forced")
    assert record["status"] == "completed" and record["gate"]["verdict"] == "forced"


def test_memory_rows_enter_at_once_without_a_gradient_step(tmp_path):
    write_csv(tmp_path / "old.csv", blobs("a", 100, 1) + blobs("b", 100, 2))
    parent = train(tmp_path, *TABLE, f"data.path={tmp_path / 'old.csv'}", "model.memory=true", name="memory")
    rows = rows_of("c", 40, 3)
    give_feedback(parent, rows)
    assert update(str(parent), "update.train=false", "update.holdout=0", f"output={tmp_path / 'v2'}") == 0
    record = metrics(tmp_path / "v2")
    assert record["epochs"] == 0 and record["history"] == [] and record["remembered_rows"] == 160 + 40
    assert 0 < record["total_seconds"] < 60
    before, after = load_checkpoint(parent)["model"], load_checkpoint(tmp_path / "v2")["model"]
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("backbone."))  # no step taken
    assert after["memory.rows"].shape == (200, 2) and after["memory.targets"].shape == (200, 3)


def test_a_regression_model_learns_numbers_and_refuses_a_label_that_is_not_one(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [{"x": round(v, 4), "y": round(2 * v + 0.5, 4), "label": 0} for v in rng.normal(0, 1, 200)]
    write_csv(tmp_path / "numbers.csv", rows, columns=("x", "y"))
    parent = train(tmp_path, "data=csv", "data.target=y", "loss=mse", "model.hidden=[16]", "trainer.max_epochs=3",
                   f"data.path={tmp_path / 'numbers.csv'}", name="regression")
    give_feedback(parent, [("tabular", {"x": 3.0}, 6.5), ("tabular", {"x": 2.5}, "5.5"), ("tabular", {"x": 1.0}, "abc")])
    capsys.readouterr()
    assert update(str(parent), f"output={tmp_path / 'v2'}") == 2
    err = capsys.readouterr().err.strip()
    assert "label 'abc' is not a number; this model predicts numbers" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "v2").exists()
    assert update(str(parent), "update.on_bad_record=skip", "update.min_steps=30", f"output={tmp_path / 'v2'}") == 0
    gate = metrics(tmp_path / "v2")["gate"]
    assert gate["metric"] == "rmse" and gate["unit"] == "percent"


def png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_learn_a_class_from_base64_feedback_and_an_image_folder(tmp_path, capsys):
    photos = image_folder(tmp_path / "photos", per_class=12)
    parent = train(tmp_path, "data=imagefolder", f"data.root={photos}", "data.image_size=8", "data.num_workers=0",
                   "data.augment=none", "model.hidden=[32]", "trainer.max_epochs=4", name="photos")
    foxes = image_folder(tmp_path / "foxes", per_class=16, splits=(), classes=("fox",), seed=1)
    more = image_folder(tmp_path / "more", per_class=10, splits=(), classes=("fox",), seed=2)
    give_feedback(parent, [("image", png_base64(Image.open(p)), "fox") for p in sorted((more / "fox").iterdir())])
    assert update(str(parent), f"data.root={foxes}", "update.min_steps=40", f"output={tmp_path / 'v2'}") == 0
    record = metrics(tmp_path / "v2")
    assert record["lineage"]["classes"]["new"] == ["fox"] and set(record["lineage"]["learned_from"]) == {"data", "feedback"}
    assert record["gate"]["after"]["new_classes"] >= 0.8
    assert load_checkpoint(tmp_path / "v2")["spec"]["preprocessing"] == load_checkpoint(parent)["spec"]["preprocessing"]

    capsys.readouterr()
    assert update(str(parent), f"data.root={foxes}", "data.image_size=16", f"output={tmp_path / 'v3'}") == 2
    err = capsys.readouterr().err.strip()
    assert "invalid data.image_size=16: the model was trained on image_size=8" in err and len(err.splitlines()) == 1


def test_text_learns_a_class_from_feedback_with_distillation(tmp_path):
    words = {"weather": "rain sunny cloudy storm wind forecast", "sport": "goal match team score league coach",
             "food": "pizza pasta bread cheese soup salad"}
    rng = np.random.default_rng(0)

    def texts(cls: str, n: int) -> list[str]:
        return [" ".join(rng.choice(words[cls].split(), 4)) + " today" for _ in range(n)]

    lines = ["text,label"] + [f"{t},{c}" for c in ("weather", "sport") for t in texts(c, 80)]
    (tmp_path / "texts.csv").write_text("\n".join(lines) + "\n")
    parent = train(tmp_path, "data=text", f"data.path={tmp_path / 'texts.csv'}", "data.vocab_size=100", "model=bag",
                   "model.dim=16", "model.buckets=1000", "trainer.max_epochs=4", "optimizer.lr=0.01", name="texts")
    give_feedback(parent, [("text", t, "food") for t in texts("food", 40)])
    assert update(str(parent), "update.distill=1", "update.min_steps=40", f"output={tmp_path / 'v2'}") == 0
    record = metrics(tmp_path / "v2")
    assert record["gate"]["after"]["new_classes"] >= 0.9 and record["lineage"]["settings"]["distill"] == 1
    # RUN's tokenizer, never one refitted on the new texts.
    assert load_checkpoint(tmp_path / "v2")["spec"]["preprocessing"] == load_checkpoint(parent)["spec"]["preprocessing"]


def test_bad_inputs_are_one_line_and_exit_2(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    write_csv(tmp_path / "no_y.csv", blobs("c", 20, 1), columns=("x", "label"))
    cases = [
        ([str(tmp_path / "empty")], "no checkpoint in"),
        ([str(run)], "no new examples to learn from"),
        ([str(run), f"data.path={tmp_path / 'no_y.csv'}"], "has no column 'y': the model was trained on the columns x, y"),
        ([str(run), "data.paht=new.csv"], "unknown data.paht; did you mean data.path? the checkpoint's data=csv has "),
        ([str(run), "update.replya=2"], "did you mean replay?"),
        ([str(run), "update.replay=-1"], "invalid update.replay=-1"),
        ([str(run), "update.distill=some"], "invalid update.distill='some': must be auto or a number >= 0"),
        ([str(run), "trainer.max_epoch=3"], "(trainer.KEY, optimizer.KEY, scheduler.KEY, early_stopping.KEY, loss.KEY: "
                                            "keys RUN's config has); did you mean trainer.max_epochs?"),
        ([str(run), "model.hidden=[8]"], "an update keeps RUN's model"),
    ]
    for args, message in cases:
        assert update(*args, f"output={tmp_path / 'out'}") == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (args, err)
        assert not (tmp_path / "out").exists(), args

    give_feedback(run, [("text", "a text for a table model", "c")])
    assert update(str(run), f"output={tmp_path / 'out'}") == 2
    assert "it is a text record; this model takes tabular inputs" in capsys.readouterr().err
    give_feedback(run, rows_of("c", 10, 2))
    assert update(str(run), "update.on_bad_record=skip", f"output={run / 'inside'}") == 2
    assert "never writes into the run it updates" in capsys.readouterr().err
    assert not (run / "inside").exists()
