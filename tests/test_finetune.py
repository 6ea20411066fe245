"""Fine-tuning and transfer learning, as the docs show it: model.init_from, model.pretrained,
model.freeze and optimizer.backbone_lr_factor."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from conftest import metrics, run_in_process, train
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError
from nettrain.models.build import build_model
from nettrain.models.weights import adapt_stem, prepare
from nettrain.records.checkpoint import load_checkpoint
from nettrain.training.optim import build_optimizer

# Only two training batches: from scratch that is far from the source run's accuracy.
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]
DIGITS = DataSpec(input_shape=[1, 8, 8], num_classes=10, class_names=[str(i) for i in range(10)],
                  preprocessing={"kind": "image", "image_size": 8, "channels": 1, "mean": [0.3], "std": [0.4]})


@pytest.fixture(scope="module")
def source(digits_run):
    """The model to start from (val accuracy ~0.94)."""
    return digits_run


def _model_cfg(name: str, **keys):
    from hydra import compose, initialize_config_module

    with initialize_config_module("nettrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"]).model
    cfg.merge_with(keys)
    return cfg


def test_fine_tuning_from_a_checkpoint_starts_at_its_accuracy_not_at_chance(source, tmp_path):
    source_accuracy = metrics(source)["best"]["val_accuracy"]
    tuned = train(tmp_path, f"model.init_from={source}", *SHORT, name="tuned")
    scratch = train(tmp_path, *SHORT, name="scratch")
    first_epoch = metrics(tuned)["history"][0]["val_accuracy"]
    assert first_epoch >= source_accuracy - 0.03
    assert metrics(scratch)["history"][0]["val_accuracy"] < source_accuracy - 0.2


def test_init_from_with_other_classes_keeps_the_backbone_and_reinitializes_the_head(source):
    three = DataSpec(input_shape=[1, 8, 8], num_classes=3, class_names=["a", "b", "c"])
    cfg = _model_cfg("mlp", init_from=str(source))
    model = build_model(cfg, three)
    prepare(model, cfg, three)
    weights = load_checkpoint(source)["model"]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, weights[f"backbone.{key}"])
    assert model.head[1].weight.shape == (3, 128)


def test_freeze_backbone_trains_only_the_head(source, tmp_path):
    run_dir = train(tmp_path, f"model.init_from={source}", "model.freeze=backbone", *SHORT)
    before, after = load_checkpoint(source)["model"], load_checkpoint(run_dir)["model"]
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])


def test_frozen_batchnorm_statistics_do_not_drift():
    cfg = _model_cfg("cnn", freeze="backbone", channels=[4])
    model = build_model(cfg, DIGITS)
    prepare(model, cfg, DIGITS)
    stats = model.backbone[1].running_mean.clone()
    model.train()  # what fit does every epoch
    model(torch.randn(16, 1, 8, 8) * 5 + 3)
    assert not model.backbone.training and model.head.training
    assert torch.equal(model.backbone[1].running_mean, stats)
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert [p for g in build_optimizer(OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}),
                                       model).param_groups for p in g["params"]] == list(model.head.parameters())


def test_backbone_lr_factor_gives_the_backbone_a_smaller_learning_rate():
    model = build_model(_model_cfg("mlp"), DIGITS)
    optimizer_cfg = OmegaConf.create({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.01,
                                      "backbone_lr_factor": 0.1})
    head, backbone = build_optimizer(optimizer_cfg, model).param_groups
    assert head["lr"] == 0.01 and backbone["lr"] == pytest.approx(0.001)
    assert head["params"] == list(model.head.parameters()) and backbone["params"] == list(model.backbone.parameters())


def _torchvision_resnet18_state(path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_pretrained_file_loads_into_the_resnet_backbone_with_an_adapted_stem(tmp_path):
    state = _torchvision_resnet18_state(tmp_path / "resnet18.pth")
    cfg = _model_cfg("resnet18", pretrained=str(tmp_path / "resnet18.pth"))
    model = build_model(cfg, DIGITS)  # 8x8 grayscale: 1-channel, 3x3 stride-1 stem
    prepare(model, cfg, DIGITS)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.backbone.bn1.running_var, state["bn1.running_var"])
    stem = model.backbone.conv1.weight
    assert stem.shape == (64, 1, 3, 3)
    assert torch.equal(stem, adapt_stem(state["conv1.weight"], stem.shape))
    # Each filter's total weight is kept: the same response to a flat gray image.
    expected = state["conv1.weight"].sum((1, 2, 3)).tolist()
    assert stem.detach().sum((1, 2, 3)).tolist() == pytest.approx(expected, abs=1e-4)


def test_pretrained_imagenet_uses_the_torch_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = _torchvision_resnet18_state(cache / "resnet18-f37072fd.pth")
    cfg = _model_cfg("resnet18", pretrained="imagenet")
    model = build_model(cfg, DIGITS)
    prepare(model, cfg, DIGITS)
    assert torch.equal(model.backbone.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])


def _offline(url, *args, **kwargs):
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_pretrained_imagenet_offline_without_the_file_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    code = run_in_process("train", f"hydra.run.dir={tmp_path / 'run'}", "model=resnet18", "model.pretrained=imagenet",
                          *SHORT)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot download https://download.pytorch.org/models/resnet18" in err
    assert f"put it at {tmp_path / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}" in err
    assert not (tmp_path / "run").exists()  # no half-made run dir


def test_bad_fine_tuning_inputs_end_with_one_line_and_exit_2(source, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not weights")
    _torchvision_resnet18_state(tmp_path / "resnet18.pth")
    cases = [
        ([f"model.init_from={source}", "model.hidden=[64]"], "the weights do not fit this model"),
        ([f"model.init_from={source}", "model=cnn"], "it holds a model=mlp, this run builds model=cnn"),
        ([f"model.init_from={tmp_path / 'notes.txt'}"], "not a complete checkpoint"),
        ([f"model.init_from={tmp_path / 'absent'}"], "invalid model.init_from"),
        (["model.pretrained=imagenet"], "needs a torchvision ResNet"),
        (["model=resnet34", f"model.pretrained={tmp_path / 'resnet18.pth'}"], "expected a torchvision resnet34"),
        (["model=resnet18", f"model.pretrained={tmp_path / 'notes.txt'}"], "not a state dict"),
        (["model=resnet18", f"model.pretrained={source / 'checkpoints' / 'best.pt'}"],
         "start from it with model.init_from"),
        (["model.freeze=head"], "invalid model.freeze='head'"),
        (["+optimizer.backbone_lr_factor=-1"], "invalid optimizer.backbone_lr_factor=-1"),
    ]
    for overrides, message in cases:
        run_dir = tmp_path / "run"
        assert run_in_process("train", f"hydra.run.dir={run_dir}", *overrides, *SHORT) == 2, overrides
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (overrides, err)
        assert not run_dir.exists(), overrides


def test_init_and_pretrained_together_are_refused():
    cfg = _model_cfg("resnet18", init_from="a.pt", pretrained="imagenet")
    with pytest.raises(UserError, match="not both"):
        prepare(build_model(cfg, DIGITS), cfg, DIGITS)
