"""`data=text` with `model=transformer|bag|hf`: files and folders of texts, bad rows, unicode and very
long texts, the tokenizer trained on the training split only, per-batch padding, resume, and the
commands after training (eval, predict, export, check-data), on texts the tests write."""

from __future__ import annotations

import csv
import json
import logging
import random
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import metrics, run_in_process, train
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.errors import UserError
from nettrain.models.build import build_model
from nettrain.records.checkpoint import load_checkpoint

CONFIGS = Path(__file__).parent.parent / "configs"
DATA = OmegaConf.load(CONFIGS / "data" / "text.yaml")
# Each class has its own words; a text is a few of them among shared filler words.
VOCABULARY = {
    "card": ["card", "atm", "pin", "swallowed", "contactless", "chip", "blocked", "expired"],
    "refund": ["refund", "money", "back", "returned", "reimburse", "charged", "twice", "overcharged"],
    "travel": ["flight", "hotel", "abroad", "currency", "trip", "airport", "exchange", "holiday"],
}
FILLER = ["my", "the", "is", "i", "please", "help", "why", "a", "was", "still", "can", "you"]
TINY = ["model.dim=16", "model.heads=2", "model.ff_dim=32", "model.layers=1", "data.batch_size=8",
        "optimizer.lr=0.01", "trainer.log_every_n_steps=5"]


def sentence(rng: random.Random, label: str) -> str:
    words = rng.sample(VOCABULARY[label], 3) + rng.sample(FILLER, rng.randint(1, 5))
    rng.shuffle(words)
    return " ".join(words)


def texts_csv(path: Path, per_class: int = 30, seed: int = 0, extra_rows: list[list[str]] = (),
              labels: tuple[str, ...] = tuple(VOCABULARY)) -> Path:
    rng = random.Random(seed)
    rows = [[sentence(rng, label), label] for label in labels for _ in range(per_class)]
    rng.shuffle(rows)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["message", "intent"])
        writer.writerows([*rows, *extra_rows])
    return path


def cfg(path: Path, **overrides) -> OmegaConf:
    return OmegaConf.merge(DATA, {"path": str(path), "text": "message", "target": "intent", "tokenizer": None,
                                  "batch_size": 8, **overrides})


def text_args(path: Path, *more: str) -> list[str]:
    return ["data=text", f"data.path={path}", "data.text=message", "data.target=intent", *more]


# --- reading the data ------------------------------------------------------------------------------

def test_tokenizer_learns_from_the_training_split_only_and_batches_are_padded_to_their_longest(tmp_path):
    train_file = texts_csv(tmp_path / "train.csv")
    val_file = texts_csv(tmp_path / "val.csv", per_class=4, seed=1,
                         extra_rows=[["zyzzyva quixotic xylophone card", "card"]] * 3)
    data = build_data(cfg(train_file, val_path=str(val_file), min_frequency=1), DataContext(seed=0))
    pre = data.spec.preprocessing
    assert pre["kind"] == "text" and pre["pad_id"] == 0 and data.spec.class_names == ["card", "refund", "travel"]
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(pre["tokenizer"]).get_vocab()
    assert "swallowed" in vocab and "zyzzyva" not in vocab and "quixotic" not in vocab  # val words are unseen
    assert data.train.num_samples == 90 and data.val.num_samples == 15
    for x, _ in data.train.batches(0):
        lengths = (x != 0).sum(1)
        assert x.dtype == torch.long and x.shape[1] == lengths.max()  # cut to this batch's longest
        assert (x[:, 0] == 2).all()  # [CLS] first


def test_bad_rows_are_counted_and_named_or_refused(tmp_path, caplog):
    path = texts_csv(tmp_path / "t.csv", extra_rows=[["", "card"], ["   ", "refund"], ["no label here", ""]])
    with path.open("ab") as f:
        f.write("caf\xe9 card pin,card\n".encode("latin-1"))  # not UTF-8
        f.write(b"only one cell\n")
    with caplog.at_level(logging.WARNING, logger="nettrain"):
        data = build_data(cfg(path), DataContext(seed=0))
    assert data.train.num_samples + data.val.num_samples == 90
    log = caplog.text
    assert "5 bad row(s) left out: 2 empty text, 2 missing label, 1 undecodable bytes" in log
    assert f"{path}:92: empty text" in log and f"{path}:95: undecodable bytes (not UTF-8)" in log
    with pytest.raises(UserError, match=f"{path}:92: empty text \\(data.on_bad_row=error"):
        build_data(cfg(path, on_bad_row="error"), DataContext(seed=0))


def test_unicode_and_very_long_texts(tmp_path):
    rng = random.Random(0)
    long_text = " ".join(rng.choice(VOCABULARY["travel"]) for _ in range(20_000))
    extra = [["Mon vol à Zürich a été annulé ✈️ flight", "travel"], ["我的卡被吞了 card atm", "card"],
             ["REFUND money 💸 naïve café", "refund"], [long_text, "travel"]]
    path = texts_csv(tmp_path / "t.csv", extra_rows=extra)
    data = build_data(cfg(path, max_length=32, val_fraction=0.2), DataContext(seed=0))
    assert data.spec.input_shape == [32]
    widths = [x.shape[1] for split in (data.train, data.val) for x, _ in split.batches(0)]
    assert max(widths) == 32 and min(widths) < 32  # the long text is cut; batches without it stay short
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(data.spec.preprocessing["tokenizer"])
    assert tok.encode("FLIGHT Zürich").tokens[:2] == ["[CLS]", "flight"]  # lower-cased, accents handled


@pytest.mark.parametrize("rows, message", [
    ([], "every training text has the label 'card'; classification needs at least 2 classes"),
    ([["refund money", "refund"]], "class 'refund' has only 1 sample"),
])
def test_one_class_and_too_rare_classes_are_clear_errors(tmp_path, rows, message):
    path = texts_csv(tmp_path / "t.csv", labels=("card",), extra_rows=rows)
    with pytest.raises(UserError, match=message):
        build_data(cfg(path), DataContext(seed=0))


def test_folders_of_txt_files_and_jsonl_and_tsv(tmp_path):
    rng = random.Random(0)
    for split, n in (("train", 12), ("val", 3)):
        for label in ("pos", "neg"):
            folder = tmp_path / "reviews" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.txt").write_text(sentence(rng, "card" if label == "pos" else "travel"), encoding="utf-8")
    (tmp_path / "reviews" / "train" / "pos" / "empty.txt").write_text("")
    data = build_data(OmegaConf.merge(DATA, {"root": str(tmp_path / "reviews"), "tokenizer": None}), DataContext())
    assert data.spec.class_names == ["neg", "pos"] and data.train.num_samples == 24 and data.val.num_samples == 6

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(json.dumps({"message": sentence(rng, c), "intent": c}) for c in ["card", "travel"] * 10)
                     + "\nnot json\n", encoding="utf-8")
    assert build_data(cfg(jsonl, val_fraction=0.2), DataContext()).train.num_samples == 16
    tsv = tmp_path / "t.tsv"
    tsv.write_text("intent\tmessage\n" + "".join(f"{c}\t{sentence(rng, c)}\n" for c in ["card", "travel"] * 10))
    assert build_data(cfg(tsv, val_fraction=0.2), DataContext()).spec.class_names == ["card", "travel"]


def test_missing_columns_and_sources_are_named(tmp_path):
    path = texts_csv(tmp_path / "t.csv")
    with pytest.raises(UserError, match="invalid data.text='body': no such column in .*; its columns: message, intent"):
        build_data(cfg(path, text="body"), DataContext())
    with pytest.raises(UserError, match="data=text needs one of data.path=FILE"):
        build_data(OmegaConf.merge(DATA, {"tokenizer": None}), DataContext())
    with pytest.raises(UserError, match="invalid data.path=.*t.xlsx.*allowed: a .csv, .tsv, .jsonl file"):
        build_data(cfg(tmp_path / "t.xlsx"), DataContext())


def test_loader_order_depends_on_seed_and_epoch_and_ranks_split_each_batch(tmp_path):
    data_cfg = cfg(texts_csv(tmp_path / "t.csv"))
    one = build_data(data_cfg, DataContext(seed=3)).train
    again = [y for _, y in build_data(data_cfg, DataContext(seed=3)).train.batches(1)]
    assert all(torch.equal(a, b) for a, b in zip(again, [y for _, y in one.batches(1)]))
    assert [y.tolist() for _, y in one.batches(1, start=2)] == [y.tolist() for y in again[2:]]  # resume mid-epoch
    ranks = [build_data(data_cfg, DataContext(seed=3, rank=r, world_size=2)).train for r in range(2)]
    whole = [x for x, _ in build_data(OmegaConf.merge(data_cfg, {"batch_size": 16}), DataContext(seed=3)).train.batches(0)]
    halves = [[x for x, _ in loader.batches(0)] for loader in ranks]
    texts = lambda batch: sorted(tuple(row[row != 0].tolist()) for row in batch)  # noqa: E731
    assert texts(whole[0]) == texts(torch.cat([torch.nn.functional.pad(h[0], (0, 64 - h[0].shape[1])) for h in halves]))


# --- models ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, overrides", [("transformer", {"dim": 16, "heads": 2, "ff_dim": 32}),
                                             ("transformer", {"dim": 16, "heads": 2, "ff_dim": 32, "pooling": "first"}),
                                             ("bag", {"ngrams": 3, "buckets": 50})])
def test_padding_never_changes_a_prediction(tmp_path, name, overrides):
    data = build_data(cfg(texts_csv(tmp_path / "t.csv")), DataContext())
    model = build_model(OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / f"{name}.yaml"), overrides), data.spec).eval()
    x, _ = next(iter(data.val.batches(0)))
    padded = torch.nn.functional.pad(x, (0, 7))
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded), atol=1e-5)


def test_text_models_refuse_other_data_and_bad_shapes(tmp_path):
    assert run_in_process("train", "model=transformer", f"hydra.run.dir={tmp_path / 'runs' / 'r'}") == 2  # digits
    path = texts_csv(tmp_path / "t.csv")
    assert run_in_process("train", *text_args(path), "model=transformer", "model.dim=30", "model.heads=4",
                          f"hydra.run.dir={tmp_path / 'runs' / 'r'}") == 2
    assert not (tmp_path / "runs" / "r").exists()


# --- end to end ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A tiny transformer trained on generated intents, with a test file for eval."""
    tmp = tmp_path_factory.mktemp("text")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        path = texts_csv(tmp / "train.csv", per_class=40)
        test = texts_csv(tmp / "test.csv", per_class=10, seed=5)
        run_dir = train(tmp, *text_args(path, f"data.test_path={test}"), "model=transformer", *TINY, "trainer.max_epochs=4")
    return run_dir


def test_transformer_learns_and_eval_reports_the_test_split(text_run, capsys):
    assert metrics(text_run)["best"]["val_accuracy"] >= 0.9
    assert run_in_process("eval", f"ckpt={text_run}", "split=test") == 0
    out = capsys.readouterr().out
    assert "test split: 30 samples" in out and "refund" in out
    report = json.loads((text_run / "eval" / "test" / "metrics.json").read_text())
    assert report["accuracy"] >= 0.9 and set(report["per_class"]) == {"card", "refund", "travel"}


def test_predict_a_text_a_file_of_lines_and_a_csv(text_run, tmp_path, capsys):
    assert run_in_process("predict", f"ckpt={text_run}", "text=my card was swallowed by the ATM", "format=json") == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["input"] == "my card was swallowed by the ATM" and result["prediction"] == "card"
    lines = tmp_path / "messages.txt"
    lines.write_bytes(b"when do i get my refund money back\n\nmy flight to the airport and a hotel abroad for the holiday trip\n"
                      b"\xff\xfe broken\n")
    assert run_in_process("predict", f"ckpt={text_run}", f"input={lines}", "format=csv") == 0
    captured = capsys.readouterr()
    rows = list(csv.reader(captured.out.splitlines()))
    assert rows[0] == ["input", "prediction", "card", "refund", "travel"]
    assert [r[:2] for r in rows[1:]] == [[f"{lines}:1", "refund"], [f"{lines}:3", "travel"]]
    assert f"{lines}:4: undecodable bytes" in captured.err
    table = texts_csv(tmp_path / "new.csv", per_class=2, seed=9)
    assert run_in_process("predict", f"ckpt={text_run}", f"input={table}", "top_k=1") == 0
    assert f"{table}:2" in capsys.readouterr().out
    assert run_in_process("predict", f"ckpt={text_run}", "text=   ") == 2
    assert "empty text" in capsys.readouterr().err


def test_export_onnx_with_dynamic_batch_and_length_and_the_tokenizer_beside_it(text_run, tmp_path):
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    assert run_in_process("export", f"ckpt={text_run}", f"output={tmp_path / 'intent.onnx'}") == 0
    meta = json.loads((tmp_path / "intent.json").read_text())
    assert meta["input_shape"] == ["batch", "sequence"] and meta["dtype"] == "int64" and meta["max_abs_diff"] <= 1e-4
    tokenizer = Tokenizer.from_file(str(tmp_path / meta["preprocessing"]["tokenizer_file"]))
    session = onnxruntime.InferenceSession(str(tmp_path / "intent.onnx"))
    texts = ["the atm kept my card", "please refund me, you charged twice and overcharged my money back"]
    ids = np.array([e.ids for e in tokenizer.encode_batch(texts)], dtype=np.int64)
    logits = session.run([meta["output_name"]], {meta["input_name"]: ids})[0]
    assert [meta["class_names"][i] for i in logits.argmax(-1)] == ["card", "refund"]
    assert run_in_process("export", f"ckpt={text_run}", "format=torchscript", f"output={tmp_path / 'intent.pt'}") == 0
    scripted = torch.jit.load(str(tmp_path / "intent.pt"))
    assert torch.allclose(scripted(torch.from_numpy(ids)), torch.from_numpy(logits), atol=1e-4)


def test_check_data_reports_lengths_duplicates_and_leakage(tmp_path, capsys):
    path = texts_csv(tmp_path / "t.csv", extra_rows=[["pin blocked card", "card"]] * 2 + [["pin blocked card", "refund"]])
    val = texts_csv(tmp_path / "v.csv", per_class=3, seed=2, extra_rows=[["PIN blocked card", "card"], ["", "card"]])
    assert run_in_process("check-data", *text_args(path, f"data.val_path={val}"), "strict=true") == 1
    out = capsys.readouterr().out
    assert "length in tokens" in out and "p95" in out
    assert "duplicate texts in train: 2 (1 with different labels)" in out
    assert "val: 1 text(s) identical to a training text" in out and "1 bad row(s)" in out


def test_bag_trains_and_fine_tuning_reuses_the_checkpoint_tokenizer(tmp_path):
    path = texts_csv(tmp_path / "t.csv")
    first = train(tmp_path, *text_args(path), "model=bag", "model.buckets=1000", "model.dim=16", "data.batch_size=8",
                  "optimizer.lr=0.05", "trainer.max_epochs=3", name="bag")
    assert metrics(first)["best"]["val_accuracy"] >= 0.9
    other = texts_csv(tmp_path / "other.csv", per_class=20, seed=7, extra_rows=[["zyzzyva words only here", "card"]] * 5)
    second = train(tmp_path, *text_args(other), "model=bag", "model.buckets=1000", "model.dim=16", "data.batch_size=8",
                   f"model.init_from={first}", "model.freeze=backbone", "trainer.max_epochs=1", name="tuned")
    tokenizer = [load_checkpoint(run / "checkpoints" / "best.pt")["spec"]["preprocessing"]["tokenizer"] for run in (first, second)]
    assert tokenizer[0] == tokenizer[1]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    path = texts_csv(tmp_path / "t.csv")
    args = [*text_args(path), "model=transformer", *TINY]
    straight = train(tmp_path, *args, "trainer.max_epochs=2", name="straight")
    half = train(tmp_path, *args, "trainer.max_epochs=1", name="half")
    assert run_in_process("train", f"resume={half}", "trainer.max_epochs=2") == 0
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt")["model"] for d in (straight, half))
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- pretrained Hugging Face encoders -------------------------------------------------------------------

def tiny_bert(folder: Path) -> Path:
    """A BERT of 2 small layers and a WordPiece vocabulary of the test words, saved like a download."""
    transformers = pytest.importorskip("transformers")
    words = sorted({w for ws in VOCABULARY.values() for w in ws} | set(FILLER))
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=5 + len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_hf_encoder_trains_with_its_own_tokenizer_and_predicts_without_its_folder(tmp_path, capsys):
    import shutil

    encoder = tiny_bert(tmp_path / "tiny-bert")
    path = texts_csv(tmp_path / "t.csv")
    run_dir = train(tmp_path, *text_args(path), "model=hf", f"model.encoder={encoder}", "data.batch_size=8",
                    "optimizer.lr=0.01", "trainer.max_epochs=3", name="hf")
    history = metrics(run_dir)["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    words = {w for ws in VOCABULARY.values() for w in ws} | set(FILLER)
    assert ckpt["spec"]["preprocessing"]["vocab_size"] == 5 + len(words)
    assert json.loads(ckpt["config"]["model"]["config"])["hidden_size"] == 16
    args = ("predict", f"ckpt={run_dir}", "text=the atm swallowed my card", "format=json")
    assert run_in_process(*args) == 0
    with_folder = capsys.readouterr().out
    shutil.rmtree(encoder)  # the checkpoint holds the encoder's config, weights and tokenizer
    assert run_in_process(*args) == 0
    assert capsys.readouterr().out == with_folder


def test_hf_encoder_offline_says_how_to_get_the_weights(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The hub reads the variable once, at import: an earlier test may have imported it already.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    path = texts_csv(tmp_path / "t.csv")
    assert run_in_process("train", *text_args(path), "model=hf", "model.encoder=no-such-org/no-such-model",
                          f"hydra.run.dir={tmp_path / 'runs' / 'r'}") == 2
    err = capsys.readouterr().err
    assert "huggingface-cli download no-such-org/no-such-model --local-dir DIR" in err and "model.encoder=DIR" in err
    assert not (tmp_path / "runs" / "r").exists()


def test_the_intents_recipe_runs(tmp_path):
    path = texts_csv(tmp_path / "t.csv")
    run_dir = train(tmp_path, "+experiment=text_intents", f"data.path={path}", "data.text=message", "data.target=intent",
                    "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    assert metrics(run_dir)["status"] == "completed"


@pytest.mark.parametrize("model, runtime", [(["model=bag", "model.buckets=1000", "model.dim=16"], "trainer.devices=2"),
                                            (["model=transformer", *TINY], "trainer.precision=bf16")])
def test_text_models_train_data_parallel_and_in_bf16(tmp_path, model, runtime):
    path = texts_csv(tmp_path / "t.csv")
    run_dir = train(tmp_path, *text_args(path), *model, "data.batch_size=8", "optimizer.lr=0.01", runtime, "trainer.max_epochs=3")
    record = metrics(run_dir)
    assert record["status"] == "completed" and record["history"][-1]["val_accuracy"] > 0.5
