"""The model zoo, as the README shows it: timm architectures (`model=timm model.arch=...`) and the Inceptions;
the timm ones train a debug=fast epoch and export to ONNX, checked against PyTorch; Inception v3 trains. Images are kept tiny
(32 px; 96 px for Inception v3) so these stay affordable on 2 CPU cores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import run_in_process, train
from datagen import image_folder
from nettrain.data.spec import DataSpec
from nettrain.errors import UserError
from nettrain.export.formats import export_checkpoint
from nettrain.models.build import before_data, build_model
from nettrain.models.weights import prepare
from nettrain.training.optim import build_optimizer

CONFIGS = Path(__file__).parents[1] / "configs"
TINY = ["data.batch_size=2", "data.num_workers=0", "debug=fast", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return image_folder(tmp_path_factory.mktemp("zoo") / "pictures", per_class=2)


def timm_cfg(arch: str, **changes):
    return OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / "timm.yaml"), {"arch": arch}, changes)


# A convolutional and an attention model: their ONNX graphs share nothing. (efficientnet_b0 took 72 s here.)
@pytest.mark.parametrize("arch", ["convnext_nano", "vit_tiny_patch16_224"])
def test_timm_architecture_trains_a_fast_epoch_and_exports_to_onnx(arch, pictures, tmp_path):
    run_dir = train(tmp_path, "model=timm", f"model.arch={arch}", "data=imagefolder", f"data.root={pictures}",
                    "data.image_size=32", *TINY)
    target, info = export_checkpoint(run_dir, "onnx")
    assert target.is_file() and info["model"] == f"timm:{arch}" and info["max_abs_diff"] <= 1e-4
    assert info["input_shape"] == ["batch", 3, 32, 32] and info["class_names"] == ["cat", "dog"]


def test_inception_v3_trains_on_96_px_images_and_exports(tmp_path):
    # After one step its BatchNorm statistics are unsettled and its outputs large (~1e9): the export check
    # holds them to 1e-4 of their scale, as float32 can.
    pictures = image_folder(tmp_path / "pictures", per_class=2)
    run_dir = train(tmp_path, "model=inception_v3", "data=imagefolder", f"data.root={pictures}", "data.image_size=96",
                    "data.channels=1", *TINY, "trainer.limit_train_batches=1")
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["spec"]["input_shape"] == [1, 96, 96] and "backbone.Mixed_7c.branch_pool.conv.weight" in ckpt["model"]
    assert not any("AuxLogits" in k for k in ckpt["model"])  # trained without the auxiliary classifier
    # TorchScript: its ONNX export took 26 s here, and the timm cases above cover ONNX.
    assert run_in_process("export", f"ckpt={run_dir}", "format=torchscript", f"output={tmp_path / 'inception.pt'}") == 0
    info = json.loads((tmp_path / "inception.json").read_text())
    assert info["max_abs_diff"] <= info["tolerance"] and info["input_shape"] == ["batch", 1, 96, 96]


@pytest.mark.parametrize("name, size, ok", [("inception_v3", 74, False), ("inception_v3", 75, True),
                                             ("googlenet", 14, False), ("googlenet", 15, True)])
def test_inception_input_size_rules(name, size, ok):
    cfg = OmegaConf.load(CONFIGS / "model" / f"{name}.yaml")
    spec = DataSpec(input_shape=[1, size, size], num_classes=3, class_names=["a", "b", "c"])
    if not ok:
        with pytest.raises(UserError, match=f"invalid model='{name}': needs images of at least {size + 1} px, but the data "
                                            f"has {size} px"):
            build_model(cfg, spec)
        return
    model = build_model(cfg, spec)
    model.train()  # no auxiliary classifier: training gives the one output the loss takes
    out = model(torch.randn(2, 1, size, size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_timm_freeze_backbone_and_backbone_lr_factor_treat_the_classifier_as_the_head():
    spec = DataSpec(input_shape=[1, 32, 32], num_classes=4, class_names=list("abcd"))
    model = build_model(timm_cfg("test_convnext", dropout=0.2), spec)
    assert model.head[0].p == 0.2 and model.head[1].out_features == 4
    prepare(model, OmegaConf.create({"freeze": "backbone"}), spec)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.1.weight", "head.1.bias"}
    model = build_model(timm_cfg("test_convnext"), spec)
    optimizer = build_optimizer(OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1,
                                                  "backbone_lr_factor": 0.1}), model)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, pytest.approx(0.01)]
    assert len(optimizer.param_groups[0]["params"]) == 2  # the head: its weight and bias


def _fake_hub_cache(cache: Path, arch: str) -> dict[str, torch.Tensor]:
    """timm's weights for `arch` as the Hugging Face cache holds them (random weights, never downloaded)."""
    import safetensors.torch
    import timm

    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    snapshot = cache / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    state = timm.create_model(arch).state_dict()
    safetensors.torch.save_file(state, snapshot / "model.safetensors")
    return state


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_timm_pretrained_loads_the_cached_weights_and_sets_the_preprocessing(offline_hub):
    state = _fake_hub_cache(offline_hub, "test_resnet")
    cfg = OmegaConf.create({"model": timm_cfg("test_resnet", pretrained=True),
                            "data": {"name": "imagefolder", "image_size": 32, "mean": [0.4] * 3, "std": [0.2] * 3}})
    before_data(cfg)
    assert cfg.data.image_size == 160 and list(cfg.data.mean) == [0.5] * 3 and list(cfg.data.std) == [0.5] * 3
    spec = DataSpec(input_shape=[3, 160, 160], num_classes=2, class_names=["a", "b"])
    model = build_model(cfg.model, spec)
    prepare(model, cfg.model, spec)
    loaded = model.backbone.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded) and "fc.weight" not in loaded


def test_timm_pretrained_offline_names_what_to_fetch_and_the_cache_before_reading_data(offline_hub, pictures, tmp_path,
                                                                                      capsys):
    assert run_in_process("train", f"hydra.run.dir={tmp_path / 'runs' / 'run'}", "model=timm", "model.arch=test_resnet",
                          "model.pretrained=true", "data=imagefolder", f"data.root={pictures}") == 2
    err = capsys.readouterr().err.strip()
    assert "model.pretrained=true: cannot get timm's test_resnet weights" in err and len(err.splitlines()) == 1
    assert "huggingface-cli download timm/test_resnet.r160_in1k" in err and str(offline_hub) in err


def test_bad_timm_configs_are_one_line(pictures, tmp_path, capsys):
    base = ["train", f"hydra.run.dir={tmp_path / 'runs' / 'run'}", "data=imagefolder", f"data.root={pictures}", *TINY]
    cases = [(["model=timm"], "missing model.arch: model=timm needs it"),
             (["model=timm", "model.arch=resnet9000"], "invalid model.arch='resnet9000': not a timm architecture"),
             (["model=timm", "model.arch=convnext_nano", "data.image_size=8"],
              "invalid model.arch='convnext_nano': cannot take inputs of shape [3, 8, 8]"),
             (["model=timm", "model.arch=test_resnet", "model.pretrained=imagenet"],
              "invalid model.pretrained='imagenet': allowed with model=timm: true"),
             (["model=inception_v3", "data.image_size=64"], "needs images of at least 75 px, but the data has 64 px")]
    for overrides, message in cases:
        assert run_in_process(*base, *overrides) == 2, overrides
        err = capsys.readouterr().err.strip()  # size errors come once the data (and its size) is known: after its log line
        assert message in err.splitlines()[-1] and err.count("nettrain:") == 1, (overrides, err)
        assert not (tmp_path / "runs" / "run").exists()
