"""Training-recipe parts: no weight decay on norms and biases, test-time flip (trainer.tta), an offline
`model.pretrained=imagenet` failing before any data is read, and the hint when epochs wait on decoding."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import metrics, run_in_process, train
from datagen import image_folder, machines_csv
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError
from nettrain.models.build import build_model
from nettrain.models.tta import FlipAverage, with_tta
from nettrain.models.weights import prepare
from nettrain.records.checkpoint import load_checkpoint, save_checkpoint
from nettrain.training.optim import build_optimizer

IMAGES = DataSpec(input_shape=[3, 8, 8], num_classes=2, class_names=["cat", "dog"],
                  preprocessing={"kind": "image", "image_size": 8, "channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3})


def _cnn(**keys):
    cfg = OmegaConf.create({"name": "cnn", "channels": [4, 8], "kernel_size": 3, "pool": "max", "dropout": 0.0, **keys})
    return cfg, build_model(cfg, IMAGES)


def _adamw(**keys):
    return OmegaConf.create({"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.01, "weight_decay": 0.05, **keys})


def _ids(params):
    return {id(p) for p in params}


# --- no weight decay on norms and biases -------------------------------------------------------

def test_norms_and_biases_get_no_weight_decay_and_weights_keep_theirs():
    _, model = _cnn()
    decayed, spared = build_optimizer(_adamw(), model).param_groups
    weights = [model.backbone[0].weight, model.backbone[4].weight, model.head[1].weight]
    norms_and_biases = [model.backbone[1].weight, model.backbone[1].bias, model.backbone[5].weight,
                        model.backbone[5].bias, model.head[1].bias]
    assert decayed["weight_decay"] == 0.05 and _ids(decayed["params"]) == _ids(weights)
    assert spared["weight_decay"] == 0.0 and _ids(spared["params"]) == _ids(norms_and_biases)
    assert decayed["lr"] == spared["lr"] == 0.01


def test_with_backbone_lr_factor_each_lr_group_splits_and_the_head_comes_first():
    _, model = _cnn()
    groups = build_optimizer(_adamw(backbone_lr_factor=0.1), model).param_groups
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(0.01, 0.05), (0.01, 0.0), (pytest.approx(0.001), 0.05),
                                                               (pytest.approx(0.001), 0.0)]
    assert [_ids(g["params"]) for g in groups] == [
        _ids([model.head[1].weight]), _ids([model.head[1].bias]),
        _ids([model.backbone[0].weight, model.backbone[4].weight]),
        _ids([p for p in model.backbone.parameters() if p.ndim == 1])]


def test_frozen_parameters_stay_out_of_every_group():
    cfg, model = _cnn(freeze="backbone")
    prepare(model, cfg, IMAGES)
    groups = build_optimizer(_adamw(), model).param_groups
    assert [(_ids(g["params"]), g["weight_decay"]) for g in groups] == [
        (_ids([model.head[1].weight]), 0.05), (_ids([model.head[1].bias]), 0.0)]


def test_decay_norms_and_biases_true_or_no_weight_decay_keeps_one_group():
    _, model = _cnn()
    (group,) = build_optimizer(_adamw(decay_norms_and_biases=True), model).param_groups
    assert group["weight_decay"] == 0.05 and len(group["params"]) == len(list(model.parameters()))
    (group,) = build_optimizer(_adamw(weight_decay=0.0), model).param_groups
    assert len(group["params"]) == len(list(model.parameters()))


def test_embeddings_keep_their_decay_and_timm_no_weight_decay_names_are_spared():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(10, 4)
            self.pos_embed = nn.Parameter(torch.zeros(1, 3, 4))
            self.norm = nn.LayerNorm(4)

        def no_weight_decay(self) -> set[str]:  # as timm's ViTs name theirs
            return {"pos_*"}

    model = nn.Sequential(Tokens())
    decayed, spared = build_optimizer(_adamw(), model).param_groups
    assert _ids(decayed["params"]) == _ids([model[0].embedding.weight])
    assert _ids(spared["params"]) == _ids([model[0].pos_embed, model[0].norm.weight, model[0].norm.bias])


def test_a_checkpoint_saved_before_the_split_resumes_exactly_as_it_began(tmp_path):
    """A pre-change checkpoint: its config has no decay_norms_and_biases and its optimizer one group."""
    adamw = ["optimizer=adamw", "optimizer.weight_decay=0.1", "logger=csv"]
    reference = train(tmp_path, *adamw, "optimizer.decay_norms_and_biases=true", "trainer.max_epochs=2", name="ref")
    old = train(tmp_path, *adamw, "optimizer.decay_norms_and_biases=true", "trainer.max_epochs=1", name="old")
    last = old / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    assert len(ckpt["optimizer"]["param_groups"]) == 1
    del ckpt["config"]["optimizer"]["decay_norms_and_biases"]
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version", "path")}, last)

    assert run_in_process("train", f"resume={old}", "trainer.max_epochs=2") == 0
    assert [h["val_loss"] for h in metrics(old)["history"]] == [h["val_loss"] for h in metrics(reference)["history"]]
    assert load_checkpoint(last)["config"]["optimizer"]["decay_norms_and_biases"] is True  # recorded from now on


def test_an_optimizer_state_with_other_groups_is_a_one_line_error(tmp_path, capsys):
    run_dir = train(tmp_path, "optimizer=adamw", "trainer.max_epochs=1", "logger=csv")  # two groups
    last = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(last)
    ckpt["config"]["optimizer"]["decay_norms_and_biases"] = True  # this run would build one group
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version", "path")}, last)
    capsys.readouterr()
    assert run_in_process("train", f"resume={run_dir}", "trainer.max_epochs=2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "its optimizer state has 2 parameter group(s), this run's optimizer 1" in err[-1]


# --- test-time flip -------------------------------------------------------------------------------

def test_flip_average_is_the_mean_over_each_image_and_its_mirror():
    torch.manual_seed(0)
    _, model = _cnn()
    model.eval()
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        plain, mirrored, both = model(x), model(x.flip(-1)), FlipAverage(model)(x)
    assert not torch.allclose(plain, mirrored)  # the model is not mirror-symmetric
    assert torch.allclose(both, (plain + mirrored) / 2, atol=1e-6)
    assert with_tta(model, None, IMAGES) is model


def test_tta_on_tabular_or_text_data_is_refused_in_one_line(tmp_path, capsys):
    for shape in ([5], [32]):
        with pytest.raises(UserError, match=r"invalid trainer.tta='flip': mirrors images.*allowed for this data: null"):
            with_tta(nn.Identity(), "flip", DataSpec(input_shape=shape, num_classes=2, class_names=["a", "b"]))
    path = machines_csv(tmp_path / "machines.csv", rows=60)
    code = run_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", "data=csv", f"data.path={path}",
                          "data.target=failure", "data.drop=[id,wear]", "data.categorical=[model]", "trainer.max_epochs=1",
                          "trainer.tta=flip")
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the data's own log line
    assert code == 2 and err.startswith("nettrain: invalid trainer.tta='flip': mirrors images, but the data has input shape")
    assert run_in_process("train", "trainer.tta=rotate") == 2
    assert "invalid trainer.tta='rotate': allowed: null, flip" in capsys.readouterr().err


@pytest.fixture(scope="module")
def flip_run(tmp_path_factory):
    """A small convnet trained with tta=flip and an EMA of its weights (validation measures the EMA)."""
    tmp = tmp_path_factory.mktemp("flip")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        root = image_folder(tmp / "pets", per_class=6)
        run_dir = train(tmp, "model=cnn", "model.channels=[4,8]", "data=imagefolder", f"data.root={root}",
                        "data.image_size=8", "data.num_workers=0", "data.batch_size=4", "data.augment=none", "optimizer.lr=0.05",
                        "trainer.max_epochs=2", "trainer.ema_decay=0.5", "trainer.tta=flip", "logger=csv")
    return run_dir, root


def _best_model(run_dir):
    ckpt = load_checkpoint(run_dir)
    model = build_model(OmegaConf.create(ckpt["config"]["model"]), DataSpec.from_dict(ckpt["spec"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def test_validation_measures_the_mean_over_the_mirror(flip_run):
    from nettrain.data.base import DataContext
    from nettrain.data.build import build_data
    from nettrain.evaluation.metrics import evaluate
    from nettrain.models.losses import build_loss

    run_dir, _ = flip_run
    model, ckpt = _best_model(run_dir)
    cfg = OmegaConf.create(ckpt["config"])
    data = build_data(cfg.data, DataContext(eval_batch_size=16))
    criterion = build_loss(cfg.loss, data.spec)

    def val_loss(m):
        return evaluate(m, data.val, criterion, device=torch.device("cpu"), task="classification",
                        autocast=contextlib.nullcontext)[0]["loss"]

    recorded = metrics(run_dir)["best"]["val_loss"]
    assert val_loss(FlipAverage(model)) == pytest.approx(recorded, rel=1e-6)
    assert val_loss(model) != pytest.approx(recorded, rel=1e-3)


def test_eval_and_predict_apply_the_checkpoints_flip(flip_run, capsys):
    from nettrain.data.transforms import load_image

    run_dir, root = flip_run
    capsys.readouterr()
    assert run_in_process("eval", str(run_dir), "--json", f"output={run_dir / 'eval'}") == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["loss"] == pytest.approx(metrics(run_dir)["best"]["val_loss"], rel=1e-5)

    image = root / "val" / "dog" / "dog1.jpg"
    assert run_in_process("predict", str(run_dir), f"input={image}", "format=json") == 0
    predicted = json.loads(capsys.readouterr().out)[0]["probabilities"]
    model, ckpt = _best_model(run_dir)
    x = load_image(image, ckpt["spec"]["preprocessing"])[None]
    with torch.no_grad():  # log-probabilities: a confident model's probabilities differ in their small ones
        flipped = ((model(x) + model(x.flip(-1))) / 2).log_softmax(-1)[0].tolist()
        plain = model(x).log_softmax(-1)[0].tolist()
    logs = torch.tensor([predicted["cat"], predicted["dog"]], dtype=torch.float64).log().tolist()
    assert logs == pytest.approx(flipped, abs=1e-5) and logs != pytest.approx(plain, abs=1e-3)


# --- model.pretrained=imagenet offline fails before any data is read ---------------------------

def test_pretrained_imagenet_offline_fails_before_the_data_is_read(tmp_path, monkeypatch, capsys):
    import urllib.error

    import nettrain.training.loop

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    built = []
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(nettrain.training.loop, "build_data", lambda *a, **k: built.append(a))
    code = run_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", "model=resnet18", "model.pretrained=imagenet")
    err = capsys.readouterr().err.strip()
    assert code == 2 and not built
    assert len(err.splitlines()) == 1 and "model.pretrained=imagenet: cannot download https://download.pytorch.org" in err
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err


def test_pretrained_imagenet_is_fetched_into_the_hub_cache_before_the_data(tmp_path, monkeypatch):
    import nettrain.training.loop

    order = []

    def download(url, dst, hash_prefix=None, progress=True):
        order.append(("download", hash_prefix))
        open(dst, "wb").close()

    def data(*args, **kwargs):
        order.append(("data", None))
        raise UserError("stop here")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(nettrain.training.loop, "build_data", data)
    for _ in range(2):  # the second run finds the file cached
        assert run_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", "model=resnet18", "model.pretrained=imagenet") == 2
    assert order == [("download", "f37072fd"), ("data", None), ("data", None)]
    assert (tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()


# --- the hint when epochs wait on image decoding -------------------------------------------------

HINT = "for images to decode: data.cache=true decodes each image once"


def _decode_run(tmp_path, monkeypatch, capsys, *overrides, delay):
    import nettrain.data.cache
    import nettrain.data.imagefolder
    from nettrain.data.transforms import decode

    def slow(*args, **kwargs):
        time.sleep(delay)
        return decode(*args, **kwargs)

    for module in (nettrain.data.imagefolder, nettrain.data.cache):
        monkeypatch.setattr(module, "decode", slow)
    root = image_folder(tmp_path / "pets", per_class=8)
    capsys.readouterr()
    train(tmp_path, "model=cnn", "model.channels=[4]", "data=imagefolder", f"data.root={root}", "data.image_size=8",
          "data.num_workers=0", "data.batch_size=4", "trainer.max_epochs=2", "logger=csv",
          f"data.cache_dir={tmp_path / 'cache'}", *overrides)
    return [line for line in capsys.readouterr().err.splitlines() if HINT in line]


def test_an_epoch_waiting_on_decoding_gets_one_hint(tmp_path, monkeypatch, capsys):
    hints = _decode_run(tmp_path, monkeypatch, capsys, delay=0.1)
    assert len(hints) == 1  # after the first epoch only
    assert hints[0].startswith("epoch 1 waited ") and "(32 images, ~6.1 kB in memory)" in hints[0]


@pytest.mark.parametrize(("cache", "delay"), [(True, 0.1), (False, 0.0)])
def test_no_hint_for_a_cached_run_or_fast_decoding(tmp_path, monkeypatch, capsys, cache, delay):
    assert _decode_run(tmp_path, monkeypatch, capsys, f"data.cache={str(cache).lower()}", delay=delay) == []


# --- a constant learning rate is not stepped ----------------------------------------------------------

@pytest.mark.parametrize("overrides, stepped", [([], False), (["scheduler.warmup_epochs=1"], True),
                                                (["scheduler=cosine"], True)])
def test_a_constant_schedule_is_not_stepped_and_the_others_are(tmp_path, monkeypatch, overrides, stepped):
    """LambdaLR.step() is ~17 us: a tenth of a tiny model's step on the CPU, for an lr that never changes."""
    calls = []
    step = torch.optim.lr_scheduler.LambdaLR.step
    monkeypatch.setattr(torch.optim.lr_scheduler.LambdaLR, "step", lambda self, *a: calls.append(1) or step(self, *a))
    run = train(tmp_path, "trainer.max_epochs=1", *overrides)
    record = metrics(run)
    assert (len(calls) > 1) is stepped  # LambdaLR steps once itself, when it is made
    if not stepped:
        assert record["history"][0]["lr"] == OmegaConf.load(run / ".hydra" / "config.yaml").optimizer.lr
