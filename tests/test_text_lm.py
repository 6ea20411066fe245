"""Language models: `data=text_lm` with `model=gpt` trains on a plain-text file, `nettrain generate` writes text,
and what every run has (resume after kill -9, eval, export, continued training) works for it, on tiny texts the
tests write and a tiny GPT."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import datagen
from conftest import history, metrics, run_in_process, train
from nettrain.data.base import DataContext
from nettrain.data.build import build_data
from nettrain.data.loaders import BlockLoader
from nettrain.data.text_lm import BpeVocabulary, CharVocabulary

CONFIGS = Path(__file__).parent.parent / "configs"
write_text = datagen.sentences  # plain text of a small grammar


def tiny(path: Path, *more: str) -> list[str]:
    """A 1-layer GPT, 32 wide, on blocks of 16 characters: each step takes a millisecond or two."""
    return ["data=text_lm", "model=gpt", f"data.path={path}", "data.block_size=16", "data.batch_size=8",
            "data.batches_per_epoch=25", "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.dropout=0.0",
            "model.samples=1", "model.sample_tokens=20", "optimizer=adamw", "optimizer.lr=0.005",
            "trainer.log_every_n_steps=5", *more]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> Path:
    """A tiny GPT trained for 4 epochs of 25 steps on the grammar's text; tests read it and write in their own dirs."""
    tmp = tmp_path_factory.mktemp("lm")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, *tiny(write_text(tmp / "text.txt"), "trainer.max_epochs=4"))


def lm_data(path: Path, **overrides) -> object:
    cfg = OmegaConf.merge(OmegaConf.load(CONFIGS / "data" / "text_lm.yaml"),
                          {"path": str(path), "vocabulary_from": None, "block_size": 16, "batch_size": 4,
                           "batches_per_epoch": 3, **overrides})
    return build_data(cfg, DataContext(seed=0, eval_batch_size=5))


# --- training --------------------------------------------------------------------------------------------

def test_trains_and_the_loss_falls_with_bpc_and_perplexity_in_the_records(lm_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recorded = metrics(lm_run)
    epochs = recorded["history"]
    assert recorded["status"] == "completed" and len(epochs) == 4
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] < math.log(recorded["run"]["model"]["outputs"])
    for r in epochs:  # nats per token; bits per character (a token is a character here); perplexity
        assert r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2))
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0 < r["val_accuracy"] < 1 and r["train_tokens_per_sec"] == pytest.approx(16 * r["train_samples_per_sec"])
    assert recorded["run"]["data"]["tokens"] == {"train": 13_780, "val": 1_532}
    assert recorded["run"]["data"]["vocabulary"] == "24 characters"
    events = EventAccumulator(str(lm_run), size_guidance={"tensors": 0}).Reload()
    assert len(events.Scalars("bpc/val")) == 4 and len(events.Scalars("perplexity/val")) == 4
    samples = events.Tensors("samples/0/text_summary")  # a text written at every validation
    assert len(samples) == 4 and samples[-1].tensor_proto.string_val[0].decode().strip()


def test_the_first_90_percent_of_the_tokens_train_and_the_last_10_validate(tmp_path):
    text = write_text(tmp_path / "t.txt").read_text()
    data = lm_data(tmp_path / "t.txt")
    vocab = CharVocabulary("".join(sorted(set(text))))
    ids = torch.from_numpy(vocab.encode(text))
    split = int(len(ids) * 0.9)
    assert torch.equal(data.train.ids.long(), ids[:split]) and torch.equal(data.val.ids.long(), ids[split:])
    assert data.spec.task == "lm" and data.spec.num_classes == vocab.size and data.spec.input_shape == [16]
    assert data.spec.preprocessing == {"kind": "text_lm", "vocabulary": "char", "chars": vocab.chars, "vocab_size": vocab.size}
    # validation: every consecutive block of the val split once, in order, each with its next tokens
    blocks = [(x, y) for x, y in data.val.batches(0)]
    x = torch.cat([b[0] for b in blocks])
    y = torch.cat([b[1] for b in blocks])
    val = ids[split:]
    assert len(x) == (len(val) - 1) // 16 and torch.equal(x.flatten(), val[: len(x) * 16])
    assert torch.equal(y.flatten(), val[1: len(x) * 16 + 1])


def test_training_blocks_are_drawn_by_seed_and_epoch_and_shard_across_ranks():
    ids = torch.arange(1000, dtype=torch.int16)

    def batches(epoch: int, **kwargs) -> list[torch.Tensor]:
        loader = BlockLoader(ids, 8, batch_size=kwargs.pop("batch_size", 4), seed=kwargs.pop("seed", 0), per_epoch=5, **kwargs)
        return [x for x, _ in loader.batches(epoch)]

    first = batches(0)
    assert len(first) == 5 and all(b.shape == (4, 8) and b.dtype == torch.long for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, batches(0)))  # a resume replays the same blocks
    assert not torch.equal(torch.stack(first), torch.stack(batches(1))) and not torch.equal(
        torch.stack(first), torch.stack(batches(0, seed=1)))
    assert all(torch.equal(b[:, 1:], b[:, :-1] + 1) for b in first)  # contiguous blocks of the text
    # two ranks' batch k together are the single process's batch k of twice the size
    whole = batches(0, batch_size=8)
    ranks = [batches(0, rank=r, world_size=2) for r in (0, 1)]
    for k in range(5):
        assert torch.equal(torch.stack((ranks[0][k], ranks[1][k]), 1).flatten(0, 1), whole[k])
    loader = BlockLoader(ids, 8, batch_size=4, seed=0, per_epoch=5)
    assert all(torch.equal(a, b) for a, b in zip([x for x, _ in loader.batches(0, start=2)], first[2:]))


def test_a_folder_of_text_files_is_read_in_order_each_ending_a_line(tmp_path):
    folder = tmp_path / "books"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("first book" * 30)
    (folder / "b" / "c.txt").write_text("second book\n" * 30)
    (folder / ".hidden.txt").write_text("never read")
    data = lm_data(folder)
    assert "v" not in data.spec.preprocessing["chars"]  # the hidden file's letters are not in the vocabulary
    assert len(data.train.ids) + len(data.val.ids) == 300 + 1 + 360  # a.txt, its added line end, b/c.txt


def test_weight_decay_takes_the_tied_embedding_once_and_skips_norms(lm_run):
    from nettrain.inference.load import load_model
    from nettrain.training.optim import build_optimizer

    model = load_model(lm_run, "cpu").model
    assert model.lm_head.weight is model.token_embedding.weight
    groups = build_optimizer(OmegaConf.load(CONFIGS / "optimizer" / "adamw.yaml"), model).param_groups
    decayed, undecayed = ({id(p) for p in g["params"]} for g in groups)
    assert id(model.token_embedding.weight) in decayed and id(model.position_embedding.weight) in decayed
    assert id(model.norm.weight) in undecayed and groups[1]["weight_decay"] == 0.0
    assert len(decayed | undecayed) == len(list(model.parameters()))


def test_bpe_vocabulary_trains_and_writes_any_text(tmp_path, capsys, monkeypatch):
    text = write_text(tmp_path / "t.txt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bpe").mkdir()  # a folder named as the keyword: data.tokenizer=bpe is still the keyword, not a path
    run_dir = train(tmp_path, *tiny(text, "data.tokenizer=bpe", "data.vocab_size=300", "trainer.max_epochs=1"))
    assert torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["config"]["data"]["tokenizer"] == "bpe"
    epoch = metrics(run_dir)["history"][0]
    assert "val_bpc" not in epoch and epoch["val_perplexity"] == pytest.approx(math.exp(epoch["val_loss"]))
    assert run_in_process("generate", str(run_dir), "prompt=Ünïcode ✓ ", "max_new_tokens=10") == 0
    assert capsys.readouterr().out.startswith("Ünïcode ✓ ")  # bytes it never saw still encode, and decode back
    odd = tmp_path / "odd.txt"
    odd.write_text("does the café sell 42 cakes?\n" * 200)  # characters the training text never had: their bytes
    assert run_in_process("update", str(run_dir), f"data.path={odd}", "trainer.max_epochs=1",
                          f"output={tmp_path / 'v2'}") == 0
    assert metrics(tmp_path / "v2")["gate"]["after"]["new"] < metrics(tmp_path / "v2")["gate"]["before"]["new"]
    content = text.read_text() * 3
    vocab = BpeVocabulary.train(content, 300)
    whole = vocab.tokenizer.encode(content).ids
    import nettrain.data.text_lm as text_lm

    text_lm.BPE_PIECE = 1000  # in pieces, cut where the pre-tokenizer splits anyway: the same ids as the whole
    try:
        assert vocab.encode(content).tolist() == whole
    finally:
        text_lm.BPE_PIECE = 1 << 20
    assert BpeVocabulary.train(content, 300).tokenizer.to_str() == vocab.tokenizer.to_str()  # rebuilt exactly


# --- generate --------------------------------------------------------------------------------------------

class Recorder:
    """A stdout that notes what had been written at each flush."""

    def __init__(self) -> None:
        self.text, self.flushed = "", []

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        self.flushed.append(self.text)


def generate(run: Path, monkeypatch, *args: str) -> Recorder:
    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    assert run_in_process("generate", str(run), *args) == 0
    monkeypatch.undo()
    return out


def test_generate_streams_and_a_seed_reproduces_the_text(lm_run, monkeypatch):
    out = generate(lm_run, monkeypatch, "prompt=the cat", "max_new_tokens=60", "seed=3")
    assert out.text.startswith("the cat") and len(out.text) == len("the cat") + 60 + 1
    # streamed: a flush after every character, each showing one more of the text
    assert len(out.flushed) >= 60 and out.flushed[5] == out.text[: len(out.flushed[5])]
    assert generate(lm_run, monkeypatch, "prompt=the cat", "max_new_tokens=60", "seed=3").text == out.text
    assert generate(lm_run, monkeypatch, "prompt=the cat", "max_new_tokens=60", "seed=4").text != out.text
    greedy = generate(lm_run, monkeypatch, "prompt=the cat", "max_new_tokens=30", "temperature=0", "seed=1").text
    assert greedy == generate(lm_run, monkeypatch, "prompt=the cat", "max_new_tokens=30", "temperature=0", "seed=2").text
    for tiny in ("1e-300", "5e-324"):  # 0 in float32: as good as greedy, not NaN probabilities
        assert generate(lm_run, monkeypatch, "prompt=the cat", "max_new_tokens=30", f"temperature={tiny}").text == greedy
    two = generate(lm_run, monkeypatch, "max_new_tokens=20", "samples=2").text.split("\n" + "-" * 40 + "\n")
    assert len(two) == 2 and two[0] != two[1]
    # longer than the context: the model reads the last block_size characters
    assert len(generate(lm_run, monkeypatch, "prompt=" + "the cat sees the moon. " * 3, "max_new_tokens=5").text) == 69 + 5 + 1


def test_a_prompt_outside_the_character_vocabulary_is_refused_naming_it(lm_run, capfd):
    assert run_in_process("generate", str(lm_run), "prompt=the cät") == 2
    out, err = capfd.readouterr()
    assert out == "" and err.strip().splitlines() == [
        "nettrain: prompt='the cät' (character 6): character 'ä' (U+00E4) is not in the model's vocabulary of 24 "
        "characters ('.abcdefghikl...'); a character vocabulary encodes only the characters it was built from"]


@pytest.mark.parametrize("args, message", [
    (["temperature=-1"], "invalid temperature=-1: must be a number >= 0"),
    (["temperature=hot"], "invalid temperature='hot'"),
    (["top_k=0"], "invalid top_k=0: must be null (every token) or an integer >= 1"),
    (["max_new_tokens=0"], "invalid max_new_tokens=0: must be an integer >= 1"),
    (["seed=-1"], "invalid seed=-1"),
    (["samples=0"], "invalid samples=0"),
    (["max_tokens=5"], "unknown argument max_tokens=...; did you mean max_new_tokens?"),
    (["device=tpu"], "invalid device='tpu'"),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_bad_generate_arguments_are_one_line(lm_run, capfd, args, message):
    assert run_in_process("generate", str(lm_run), *args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_generate_refuses_a_classifier_and_a_missing_run(digits_run, tmp_path, capfd):
    assert run_in_process("generate", str(digits_run)) == 2
    assert run_in_process("generate", str(tmp_path / "nowhere")) == 2
    first, second = capfd.readouterr().err.strip().splitlines()
    assert "is not a language model" in first and "model=gpt trained on data=text_lm" in first
    assert second.startswith("nettrain: no such checkpoint")


def test_predict_on_a_language_model_points_at_generate(lm_run, capfd):
    for given in ('text=the cat', f"input={lm_run / 'metrics.json'}"):
        assert run_in_process("predict", str(lm_run), given) == 2
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is a language model: it writes text after a prompt, it predicts no class " \
            f'(nettrain generate {lm_run} prompt="...")' in err[0], err


# --- after training: eval, export, continued training ----------------------------------------------------

def test_eval_measures_another_text_file(lm_run, tmp_path, capsys):
    other = write_text(tmp_path / "other.txt", lines=300, seed=7)
    assert run_in_process("eval", str(lm_run), f"data.path={other}", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["tokens"] == (len(other.read_text()) - int(len(other.read_text()) * 0.9) - 1) // 16 * 16
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2)) and result["perplexity"] > 1
    own = metrics(lm_run)["best"]
    assert run_in_process("eval", str(lm_run), "--json") == 0  # its own val split: as validation measured it
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(own["val_loss"], rel=1e-6)
    assert run_in_process("eval", str(lm_run), "split=test", f"data.test_path={other}", "--json") == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == (len(other.read_text()) - 1) // 16 * 16  # measured whole


def test_eval_on_text_the_vocabulary_cannot_read_names_the_character(lm_run, tmp_path, capfd):
    other = tmp_path / "other.txt"
    other.write_text("the cat sees the moon.\n" * 20 + "the cat sees the MOON.\n" + "a dog.\n" * 10)
    assert run_in_process("eval", str(lm_run), f"data.path={other}") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"nettrain: {other}:21:18: character 'M' (U+004D) is not in the model's vocabulary of 24 characters "
                   f"('.abcdefghikl...'); a character vocabulary encodes only the characters it was built from: "
                   f"data.unknown_chars=skip leaves out the 4 character(s) of the text it lacks (3 distinct)"]
    # left out, counted: the loss of the rest
    assert run_in_process("eval", str(lm_run), f"data.path={other}", "data.unknown_chars=skip", "--json") == 0
    out, err = capfd.readouterr()
    assert math.isfinite(json.loads(out)["loss"])
    assert f"{other}: 4 character(s) (0.72%, 3 distinct) the vocabulary lacks are left out (data.unknown_chars=skip): " \
           "'O' (U+004F) x2, 'M' (U+004D) x1, 'N' (U+004E) x1" in err


def test_a_text_too_short_for_the_models_blocks_says_how_to_measure_it(lm_run, tmp_path, capfd):
    short = tmp_path / "short.txt"
    short.write_text("the cat sees the moon.\n" * 4)  # 92 characters: its last 10 % is under a block of 16 + 1
    assert run_in_process("eval", str(lm_run), f"data.path={short}") == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        f"nettrain: {short}: its last 10% (validation) holds 10 tokens, fewer than the data.block_size + 1 = 17 that "
        f"one block and its next token need; give more text (the model reads blocks of its own size), or measure all "
        f"of a short text with nettrain eval RUN split=test data.test_path=FILE"]
    assert run_in_process("eval", str(lm_run), "split=test", f"data.test_path={short}", "--json") == 0
    assert json.loads(capfd.readouterr().out)["tokens"] == 80


def test_a_data_key_added_since_a_run_was_trained_can_be_given_to_its_eval(lm_run, tmp_path, capfd):
    ckpt = torch.load(lm_run / "checkpoints" / "best.pt", weights_only=True)
    del ckpt["config"]["data"]["unknown_chars"]  # as a run trained before the key existed
    torch.save(ckpt, tmp_path / "older.pt")
    other = tmp_path / "other.txt"
    other.write_text("the cat sees the moon.\n" * 20 + "the cat sees the MOON.\n" + "a dog.\n" * 10)
    assert run_in_process("eval", str(tmp_path / "older.pt"), f"data.path={other}", "data.unknown_chars=skip",
                          f"output={tmp_path / 'eval'}") == 0
    assert run_in_process("eval", str(tmp_path / "older.pt"), "data.unknown_char=skip") == 2
    assert "unknown data.unknown_char; did you mean data.unknown_chars? the checkpoint's data=text_lm has data.name, " \
        in capfd.readouterr().err


def test_onnx_export_matches_pytorch_at_any_batch_and_length(lm_run):
    import onnxruntime

    from nettrain.inference.load import load_model

    assert run_in_process("export", str(lm_run), "format=onnx") == 0
    model_file = lm_run / "export" / "best.onnx"
    info = json.loads(model_file.with_suffix(".json").read_text())
    assert info["task"] == "lm" and info["input_shape"] == ["batch", "sequence"] and info["max_sequence"] == 16
    assert info["preprocessing"]["chars"] == load_model(lm_run).spec.preprocessing["chars"]
    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    model = load_model(lm_run, "cpu").model
    for batch, length in ((1, 1), (4, 16), (2, 7)):
        ids = torch.randint(0, info["preprocessing"]["vocab_size"], (batch, length))
        (logits,) = session.run(None, {info["input_name"]: ids.numpy()})
        with torch.inference_mode():
            assert logits.shape == (batch, length, 24) and (torch.from_numpy(logits) - model(ids)).abs().max() <= 1e-4


def test_continued_training_on_new_text_keeps_the_vocabulary(lm_run, tmp_path, capfd):
    new = write_text(tmp_path / "new.txt", lines=400, seed=11)
    scratch = train(tmp_path, *tiny(new, "trainer.max_epochs=1"), name="scratch")
    continued = train(tmp_path, *tiny(new, "trainer.max_epochs=1", f"model.init_from={lm_run}"), name="continued")
    assert metrics(continued)["history"][0]["val_loss"] < metrics(scratch)["history"][0]["val_loss"]
    saved = torch.load(continued / "checkpoints" / "best.pt", weights_only=True)
    assert saved["spec"]["preprocessing"] == torch.load(lm_run / "checkpoints" / "best.pt", weights_only=True)["spec"]["preprocessing"]
    other = tmp_path / "other.txt"
    other.write_text("the cat sees the moon.\n" * 300 + "Zebra\n")
    capfd.readouterr()
    assert run_in_process("train", *tiny(other, f"model.init_from={lm_run}"), f"hydra.run.dir={tmp_path / 'no'}") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"nettrain: {other}:301:1: character 'Z' (U+005A) is not in the model's vocabulary of 24 characters "
                   f"('.abcdefghikl...'); a character vocabulary encodes only the characters it was built from: "
                   f"data.unknown_chars=skip leaves out the 1 character(s) of the text it lacks (1 distinct)"]
    assert not (tmp_path / "no").exists()
    # a vocabulary of its own for the new text would give the weights' ids other meanings: refused
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("the cat sees the moon.\n" * 300)
    assert run_in_process("train", *tiny(fewer, f"model.init_from={lm_run}", "data.vocabulary_from=null"),
                          f"hydra.run.dir={tmp_path / 'no'}") == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        f"nettrain: invalid model.init_from='{lm_run}': its vocabulary is not the data's: read the new text with the "
        f"checkpoint's (leave data.vocabulary_from to its default, model.init_from)")


# --- update: new text, its own replayed ------------------------------------------------------------------

def reversed_text(path: Path, seed: int = 5) -> Path:
    """Another kind of text in the same characters: the grammar's sentences, their words backwards."""
    lines = write_text(path, lines=500, seed=seed).read_text().splitlines()
    path.write_text("".join(" ".join(reversed(line.rstrip(".").split())) + ".\n" for line in lines))
    return path


def test_update_learns_new_text_replaying_its_own_and_gates_on_its_loss(lm_run, tmp_path, capsys):
    new = reversed_text(tmp_path / "new.txt")
    before = (lm_run / "checkpoints" / "best.pt").read_bytes()
    capsys.readouterr()
    assert run_in_process("update", str(lm_run), f"data.path={new}", f"output={tmp_path / 'v2'}") == 0
    shown = capsys.readouterr().out
    assert "tokens of new text" in shown and "RUN's validation set" in shown and "new text held out" in shown
    record = metrics(tmp_path / "v2")
    gate, lineage = record["gate"], record["lineage"]
    assert gate["metric"] == "loss" and gate["unit"] == "percent" and gate["verdict"] == "accepted"
    assert gate["after"]["new"] < gate["before"]["new"] - 0.1  # it learned the new text
    assert gate["forgot"] <= 1.0                                # and kept its own
    assert lineage["settings"]["distill"] == 0  # update.distill=auto: none for a language model
    tokens = lineage["tokens"]
    assert tokens["new_train"] + tokens["new_holdout"] == len(new.read_text())  # a character a token
    assert tokens["new_holdout"] == round(0.2 * len(new.read_text())) and tokens["block_size"] == 16
    assert lineage["examples"]["replayed_per_epoch"] == 8 * ((tokens["new_train"] - 1) // 16)
    assert (lm_run / "checkpoints" / "best.pt").read_bytes() == before  # RUN is only read
    saved = torch.load(tmp_path / "v2" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["spec"] == torch.load(lm_run / "checkpoints" / "best.pt", weights_only=True)["spec"]
    # an update of the update replays RUN's text and the text the first one learned
    assert run_in_process("update", str(tmp_path / "v2"), f"data.path={reversed_text(tmp_path / 'more.txt', 9)}",
                          "trainer.max_epochs=1", f"output={tmp_path / 'v3'}") == 0
    chained = metrics(tmp_path / "v3")["lineage"]["tokens"]
    assert chained["replay_pool"] == tokens["replay_pool"] + tokens["new_train"]
    assert chained["old_validation"] == tokens["old_validation"] + tokens["new_holdout"]
    assert len(metrics(tmp_path / "v3")["history"]) == 1
    examples = tmp_path / "v2" / "update" / "examples.pt"
    torch.save({"format": "nettrain-update-examples", "train": {"ids": torch.zeros(4, 4), "block_size": 16}}, examples)
    capsys.readouterr()
    assert run_in_process("update", str(tmp_path / "v2"), f"data.path={new}", f"output={tmp_path / 'v4'}") == 2
    assert capsys.readouterr().err == (f"nettrain: cannot read {examples}, the examples an update of this run learned "
                                       f"(its token ids are not a 1-D tensor of integers); restore it, or update the run "
                                       f"that update started from\n")


def test_an_update_that_forgets_the_old_text_is_rejected(lm_run, tmp_path, capfd):
    flood = tmp_path / "flood.txt"
    flood.write_text("a cat. " * 3000 + "\n")
    code = run_in_process("update", str(lm_run), f"data.path={flood}", "update.replay=0", "update.distill=0",
                          "optimizer.lr=0.02", "trainer.max_epochs=2", f"output={tmp_path / 'bad'}")
    assert code == 3
    assert "nettrain: update rejected: it forgot" in capfd.readouterr().err
    record = metrics(tmp_path / "bad")
    assert record["status"] == "rejected" and record["gate"]["forgot"] > 1.0


def test_update_refuses_text_its_vocabulary_cannot_read_and_writes_nothing(lm_run, tmp_path, capfd):
    other = tmp_path / "other.txt"
    other.write_text("the cat sees the moon.\n" * 300 + "Zebra\n")
    assert run_in_process("update", str(lm_run), f"data.path={other}", f"output={tmp_path / 'no'}") == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        f"nettrain: {other}:301:1: character 'Z' (U+005A) is not in the model's vocabulary of 24 characters "
        f"('.abcdefghikl...'); a character vocabulary encodes only the characters it was built from: "
        f"data.unknown_chars=skip leaves out the 1 character(s) of the text it lacks (1 distinct)"]
    assert run_in_process("update", str(lm_run), f"output={tmp_path / 'no'}") == 2
    assert "no new examples to learn from" in capfd.readouterr().err
    assert run_in_process("update", str(lm_run), f"data.path={write_text(tmp_path / 'ok.txt')}", "data.block_size=8",
                          f"output={tmp_path / 'no'}") == 2
    assert "the new data does not fit the model" in capfd.readouterr().err
    assert not (tmp_path / "no").exists()


def test_replayed_text_is_drawn_in_its_share_by_seed_and_epoch():
    from nettrain.data.examples import ReplayBlockLoader, Tokens

    new, old = Tokens(torch.arange(1000), 10), Tokens(torch.arange(1000, 9000), 10)
    loader = ReplayBlockLoader(new, old, new_blocks=99, replayed=297, per_epoch=None, batch_size=12, seed=3)
    assert len(loader) == 33  # (99 + 297) // 12
    starts = torch.cat(loader.plan(0))
    assert (starts < 1000 - 10).sum() == 99 and (starts >= 1000).sum() == 297  # a block never crosses the seam
    assert torch.equal(starts, torch.cat(loader.plan(0))) and not torch.equal(starts, torch.cat(loader.plan(1)))
    x, y = next(loader.batches(0))
    assert torch.equal(y[:, :-1], x[:, 1:]) and x.shape == (12, 10)
    fixed = ReplayBlockLoader(new, old, new_blocks=99, replayed=297, per_epoch=5, batch_size=12, seed=3)
    assert len(fixed) == 5 and (torch.cat(fixed.plan(0)) < 1000).sum() == 15  # a quarter new, as 99 : 297


# --- resume ----------------------------------------------------------------------------------------------

def test_kill_9_mid_epoch_then_resume_is_bit_identical(tmp_path):
    text = write_text(tmp_path / "t.txt")
    # epochs of 150 steps, saved every 30: the kill lands inside epoch 2, after a mid-epoch save; dropout and a
    # cosine schedule make any slip in the data order, RNG or schedule show in the weights
    run = tiny(text, "trainer.max_epochs=3", "data.batches_per_epoch=150", "model.dropout=0.1", "scheduler=cosine",
               "trainer.checkpoint_every_n_steps=30")
    reference = train(tmp_path, *run, name="reference")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "nettrain", "train", f"hydra.run.dir={run_dir}", *run], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # polling (2 ms): the kill lands inside epoch 2
        try:
            if json.loads((run_dir / "metrics.json").read_text())["epochs"] >= 1 and \
                    torch.load(last, weights_only=True)["progress"]["batch"] > 0:
                break
        except (OSError, ValueError, KeyError, RuntimeError, EOFError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert metrics(run_dir)["status"] == "running"

    assert run_in_process("train", f"resume={run_dir}") == 0

    assert metrics(run_dir)["status"] == "completed" and history(run_dir) == history(reference)
    ours = torch.load(last, weights_only=True)["model"]
    theirs = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


# --- bad inputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, message", [
    (b"", "invalid data.path='{path}': the text is empty"),
    (b"a bit short\n", "{path}: its first 90% (training) holds 10 tokens, fewer than the data.block_size + 1 = 17 "
                       "that one block and its next token need; give more text or a smaller data.block_size"),
    (b"enough to train on, not to validate\n" * 4, "{path}: its last 10% (validation) holds 15 tokens, fewer"),
    (b"plain words \xff\xfe binary\n" * 50, "{path}:1: not UTF-8 text (byte 12: b'\\xff')"),
], ids=["empty", "too short", "too short to validate", "not UTF-8"])
def test_text_that_cannot_train_is_one_line(tmp_path, capfd, content, message):
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    assert run_in_process("train", *tiny(path), f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message.format(path=path) in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (["data.path=null"], "data=text_lm needs data.path=FILE"),
    (["data.path={tmp}/none.txt"], "invalid data.path='{tmp}/none.txt': no such file or directory"),
    (["data.path={tmp}/empty"], "invalid data.path='{tmp}/empty': this folder holds no .txt files"),
    (["data.tokenizer=words"], "invalid data.tokenizer='words': allowed: char, bpe"),
    (["data.block_size=0"], "invalid data.block_size=0: must be an integer >= 1"),
    (["data.vocab_size=100"], "invalid data.vocab_size=100: must be an integer >= 257"),
    (["data.vocabulary_from={tmp}/none"], "invalid data.vocabulary_from='{tmp}/none'"),
    (["model.n_head=3"], "invalid model.n_head=3: must divide model.n_embd=32"),
    (["loss=mse"], "invalid loss='mse': a language model (data=text_lm) is trained with loss=cross_entropy"),
], ids=lambda v: v[0] if isinstance(v, list) else "")
def test_bad_settings_are_one_line(tmp_path, capfd, overrides, message):
    (tmp_path / "empty").mkdir()
    text = write_text(tmp_path / "t.txt")
    args = [o.format(tmp=tmp_path) for o in overrides]
    assert run_in_process("train", *tiny(text), *args, f"hydra.run.dir={tmp_path / 'run'}") == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and message.format(tmp=tmp_path) in err.strip().splitlines()[-1], err
    assert not (tmp_path / "run").exists()


def test_gpt_takes_only_plain_text_and_only_gpt_takes_it(tmp_path, capfd):
    assert run_in_process("train", "model=gpt", f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        "nettrain: invalid model='gpt': needs text_lm data, but the data is image (input shape [1, 8, 8]); "
        "use data=text_lm (plain text)")
    text = write_text(tmp_path / "t.txt")
    assert run_in_process("train", "model=transformer", "data=text_lm", f"data.path={text}",
                          f"hydra.run.dir={tmp_path / 'run'}") == 2
    assert capfd.readouterr().err.strip().splitlines()[-1] == (
        "nettrain: invalid model='transformer': needs text data, but the data is text_lm (input shape [256]); "
        "use data=text")


# --- serve -----------------------------------------------------------------------------------------------

def test_serve_writes_text_with_post_generate(lm_run, digits_run):
    import httpx

    from nettrain.inference.load import load_model
    from nettrain.serving.app import create_app
    from nettrain.serving.network import listen
    from nettrain.serving.server import start
    from nettrain.serving.service import Service, Settings

    def serving(run: Path) -> tuple[object, httpx.Client]:
        running = start(create_app(Service(load_model(run, "cpu"), Settings())), listen("127.0.0.1", 0))
        return running, httpx.Client(base_url=running.url, timeout=30)

    running, client = serving(lm_run)
    try:
        asked = {"prompt": "the cat", "max_new_tokens": 40, "seed": 3}
        answer = client.post("/generate", json=asked).json()
        assert answer["prompt"] == "the cat" and len(answer["text"]) == 40
        assert client.post("/generate", json=asked).json()["text"] == answer["text"]  # seeded: the same text
        with client.stream("POST", "/generate", json=asked | {"stream": True}) as streamed:
            assert streamed.headers["content-type"].startswith("text/plain")
            pieces = list(streamed.iter_text())
        assert "".join(pieces) == "the cat" + answer["text"]
        info = client.get("/info").json()
        assert info["task"] == "lm" and info["input"]["kind"] == "text_lm" and info["input"]["context"] == 16
        for body, status, message in [
            ({"prompt": "the cät"}, 422, "character 'ä' (U+00E4) is not in the model's vocabulary"),
            ({"temperature": -1}, 422, "temperature: Input should be greater than or equal to 0"),
            ({"max_new_tokens": "9"}, 422, "max_new_tokens: Input should be a valid integer"),
            ({"max_new_tokens": 10**6}, 413, "max_new_tokens=1000000 is over this server's 4096"),
            ({"length": 5}, 422, "unknown field 'length' in the body"),
        ]:
            refused = client.post("/generate", json=body)
            assert refused.status_code == status and message in refused.json()["error"], refused.text
        refused = client.post("/predict", json={"inputs": ["the cat"]})
        assert refused.status_code == 422 and "this model writes text: POST /generate" in refused.json()["error"]
        refused = client.post("/feedback", json={"input": "the cat", "label": "x"})
        assert refused.status_code == 422 and "it learns new text with nettrain update" in refused.json()["error"]
        assert client.get("/health").json()["generated"] == 3
    finally:
        client.close()
        running.stop()
    running, client = serving(digits_run)
    try:
        refused = client.post("/generate", json={"prompt": "hello"})
        assert refused.status_code == 400 and "this model does not write text" in refused.json()["error"]
    finally:
        client.close()
        running.stop()


def test_a_text_stops_being_written_when_its_client_leaves_or_the_server_stops(lm_run, monkeypatch):
    import asyncio

    from nettrain.inference.load import load_model
    from nettrain.serving.requests import GenerateRequest
    from nettrain.serving.service import Service, Settings

    service = Service(load_model(lm_run, "cpu"), Settings())
    written = []

    def endless(prompt, **settings):  # a text that would take 1,000 s if nobody stopped it
        yield prompt
        for _ in range(10**6):
            time.sleep(0.001)
            written.append("a")
            yield "a"

    monkeypatch.setattr(service.lm, "stream", endless)
    asked = GenerateRequest.parse({"prompt": "the", "max_new_tokens": 4096})
    checks = []

    async def left() -> bool:  # the client is gone at the second check
        checks.append(1)
        return len(checks) > 1

    assert asyncio.run(asyncio.wait_for(service.generate(asked, left), 30)) is None
    assert 0 < len(written) < 10**4 and service.counts["generated"] == 0
    stream = service.generate_stream(asked)
    assert next(stream) == "the" and next(stream) == "a"
    asyncio.run(service.stop())  # a shutdown ends the text where it is
    assert list(stream) == []


# --- data-parallel and sweeps ----------------------------------------------------------------------------

def test_two_processes_train_a_language_model_as_one_with_their_global_batch(tmp_path):
    text = write_text(tmp_path / "text.txt")
    one = train(tmp_path, *tiny(text, "trainer.max_epochs=2", "data.batch_size=8"), name="one")
    two = train(tmp_path, *tiny(text, "trainer.max_epochs=2", "data.batch_size=4", "trainer.devices=2"), name="two")
    for ours, reference in zip(history(two), history(one), strict=True):
        for key in ("train_loss", "val_loss", "val_bpc"):
            assert ours[key] == pytest.approx(reference[key], rel=1e-4), key


def test_a_sweep_of_language_models_runs_each_job_and_summarizes_them(tmp_path):
    text = write_text(tmp_path / "text.txt")
    sweep = tmp_path / "sweep"
    assert run_in_process("train", "-m", "trainer.seed=0,1", *tiny(text, "trainer.max_epochs=1"),
                          f"hydra.sweep.dir={sweep}") == 0
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "completed"] and len({r["val_loss"] for r in rows}) == 2
