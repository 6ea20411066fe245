"""Your own model, data and loss via `_target_`, as docs/models.md shows it; and the
rule that a checkpoint's `_target_` is never imported unless the command names it too."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import metrics, run_in_process

GUIDE = Path(__file__).parents[1] / "docs" / "models.md"


def readme_block(first_line: str) -> str:
    """The docs' code block that starts with `first_line` (a `# path` comment), without that line."""
    for block in re.findall(r"```\w*\n(.*?)```", GUIDE.read_text(), re.S):
        if block.startswith(first_line + "\n"):
            return block[len(first_line) + 1:]
    raise AssertionError(f"no block of {GUIDE.name} starts with {first_line!r}")


@pytest.fixture
def user_code(monkeypatch):
    """sys.path and sys.modules as they were after the test: the user's modules are imported in-process."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name in ("tinynet", "shapes", "mylosses"):
            del sys.modules[name]


@pytest.fixture
def project(tmp_path, monkeypatch, user_code):
    """The docs' myproject/ (outside the repo), as the working directory."""
    root = tmp_path / "myproject"
    (root / "conf" / "model").mkdir(parents=True)
    (root / "tinynet.py").write_text(readme_block("# myproject/tinynet.py"))
    (root / "conf" / "model" / "tiny.yaml").write_text(readme_block("# myproject/conf/model/tiny.yaml"))
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy()).save(root / "digit.png")
    monkeypatch.chdir(root)
    return root


def readme_commands(run_dir: Path) -> list[list[str]]:
    lines = readme_block("cd myproject").strip().splitlines()
    return [line.replace("outputs/DATE/TIME", str(run_dir)).split()[1:] for line in lines]


def test_readme_user_model_trains_resumes_evals_predicts_and_exports(project, capsys):
    import onnxruntime

    train, resume, evaluate, predict, export = readme_commands(Path("RUN"))
    assert run_in_process(*train) == 0
    (run_dir,) = (project / "outputs").glob("*/*")
    assert metrics(run_dir)["epochs"] == 2
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["config"]["model"]["_target_"] == "tinynet.TinyNet" and "net.layers.0.weight" in ckpt["model"]
    assert run_in_process(*resume) == 0
    assert metrics(run_dir)["epochs"] == 3 and len(metrics(run_dir)["history"]) == 3
    capsys.readouterr()

    train, resume, evaluate, predict, export = readme_commands(run_dir)
    assert run_in_process(*evaluate) == 0
    assert json.loads((run_dir / "eval" / "val" / "metrics.json").read_text())["accuracy"] > 0.1
    capsys.readouterr()
    assert run_in_process(*predict, "format=json") == 0
    (prediction,) = json.loads(capsys.readouterr().out)
    assert prediction["input"] == "digit.png" and abs(sum(prediction["probabilities"].values()) - 1) < 1e-5
    assert run_in_process(*export) == 0
    info = json.loads((run_dir / "export" / "best.json").read_text())
    assert info["model"] == "tinynet.TinyNet" and info["max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(run_dir / "export" / "best.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": torch.randn(5, 1, 8, 8).numpy()})[0].shape == (5, 10)


def test_user_model_errors_are_one_line(project, capsys):
    base = ["train", "--config-dir", "conf", "model=tiny", "trainer.max_epochs=1", "hydra.run.dir=run"]
    cases = [
        (["+model.freeze=backbone"], "invalid model.freeze='backbone': model tinynet.TinyNet has no backbone/head split"),
        (["+optimizer.backbone_lr_factor=0.1"], "invalid optimizer.backbone_lr_factor=0.1: this model has no backbone/head"),
        (["model._target_=tinynet.Nope"], "cannot import model._target_=tinynet.Nope: module tinynet has no 'Nope'"),
        (["model._target_=nopkg.nets.Net"], "cannot import model._target_=nopkg.nets.Net: no module named 'nopkg' in the "
                                            "working directory"),
        (["+model.depth=3"], "model._target_=tinynet.TinyNet: got an unexpected keyword argument 'depth'"),
        (["+model.num_classes=3"], "invalid model.num_classes=3: the data gives 10"),
        (["model._target_=os"], "invalid model._target_='os': must be the import path of a class or function"),
    ]
    for overrides, message in cases:
        assert run_in_process(*base, *overrides) == 2, overrides
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (overrides, err)
        assert not (project / "run").exists()


def test_a_checkpoint_whose_code_is_missing_says_so(project, tmp_path, monkeypatch, capsys):
    assert run_in_process("train", "--config-dir", "conf", "model=tiny", "trainer.max_epochs=1", "hydra.run.dir=run") == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    sys.modules.pop("tinynet")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(project)])
    capsys.readouterr()
    assert run_in_process("export", f"ckpt={project / 'run'}", "model._target_=tinynet.TinyNet") == 2
    err = capsys.readouterr().err
    assert "cannot rebuild the model of" in err and "no module named 'tinynet'" in err and len(err.splitlines()) == 1


def _tamper(path: Path, group: str, node: dict) -> None:
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"][group] = node
    torch.save(ckpt, path)


def test_code_named_only_by_a_checkpoint_never_runs(project, tmp_path, capsys):
    """eval, predict, export, resume and init_from of checkpoints whose config names builtins.exec or
    os.system as the model, data or loss `_target_` (top level or nested) refuse, and run nothing."""
    assert run_in_process("train", "--config-dir", "conf", "model=tiny", "trainer.max_epochs=1", "hydra.run.dir=run") == 0
    capsys.readouterr()
    marker = tmp_path / "pwned"
    exec_node = {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]}
    system_node = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    nested = {"_target_": "tinynet.TinyNet", "width": system_node}
    cases = [("model", exec_node), ("model", system_node), ("model", nested), ("data", system_node), ("loss", exec_node)]
    trusted = "model._target_=tinynet.TinyNet"
    for group, node in cases:
        bad = tmp_path / f"bad-{group}"
        (bad / "checkpoints").mkdir(parents=True, exist_ok=True)
        for name in ("best.pt", "last.pt"):
            (bad / "checkpoints" / name).write_bytes((project / "run" / "checkpoints" / name).read_bytes())
            _tamper(bad / "checkpoints" / name, group, node)
        (bad / "digit.png").write_bytes((project / "digit.png").read_bytes())
        commands = [["eval", f"ckpt={bad}", trusted], ["eval", f"ckpt={bad}"],
                    ["predict", f"ckpt={bad}", f"input={bad / 'digit.png'}", trusted],
                    ["export", f"ckpt={bad}", trusted],
                    ["train", "--config-dir", "conf", "model=tiny", f"resume={bad}", "trainer.max_epochs=2"],
                    ["train", f"resume={bad}", "trainer.max_epochs=2"],
                    ["train", "--config-dir", "conf", "model=tiny", f"+model.init_from={bad}", "hydra.run.dir=ft",
                     "trainer.max_epochs=1", "trainer.limit_train_batches=1"]]
        for command in commands:
            if command[0] in ("predict", "export") and group != "model" or "hydra.run.dir=ft" in command and group != "model":
                continue  # they build only the model: the data and loss are never touched
            if "hydra.run.dir=ft" in command and node is nested:
                # init_from reads only the weights; the same TinyNet, built from this run's own config
                assert run_in_process(*command) == 0 and not marker.exists()
                capsys.readouterr()
                continue
            assert run_in_process(*command) == 2, command
            err = capsys.readouterr().err.strip()
            refused = "never imports code because a checkpoint names it" in err or "it holds a model=" in err
            assert refused and len(err.splitlines()) == 1, (command, err)
            assert not marker.exists(), command


SHAPES = '''
import torch
from torch.utils.data import TensorDataset


def make(n: int = 40, size: int = 8):
    """Dark and bright 1-channel images, as tensors already normalized."""
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.5 + y.view(-1, 1, 1, 1) * 2 - 1
    return TensorDataset(x, y)


class Pictures(torch.utils.data.Dataset):
    """PIL images, not tensors."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        from PIL import Image
        return Image.new("L", (8, 8)), 0
'''

LOSSES = '''
import torch.nn.functional as F


def smooth_ce(outputs, targets, smoothing: float = 0.0):
    return F.cross_entropy(outputs, targets, label_smoothing=smoothing)


def per_sample(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")
'''


@pytest.fixture
def data_project(tmp_path, monkeypatch, user_code):
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "shapes.py").write_text(SHAPES)
    (tmp_path / "mylosses.py").write_text(LOSSES)
    (tmp_path / "conf" / "data" / "shapes.yaml").write_text(
        "_target_: shapes.make\nn: 40\nclass_names: [dark, bright]\nbatch_size: 8\nval_fraction: 0.25\nnum_workers: 0\n"
        "preprocessing: {kind: image, image_size: 8, channels: 1, mean: [0.5], std: [0.5]}\n")
    Image.new("L", (8, 8), 250).save(tmp_path / "bright.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_user_dataset_trains_evals_with_confirmation_and_predicts_from_files(data_project, capsys):
    run = ["train", "--config-dir", "conf", "data=shapes", "model=cnn", "model.channels=[8]", "trainer.max_epochs=3",
           "optimizer.lr=0.01", "hydra.run.dir=run"]
    assert run_in_process(*run) == 0
    assert metrics(data_project / "run")["best"]["val_accuracy"] >= 0.9  # 10 val samples, an easy task
    spec = torch.load(data_project / "run" / "checkpoints" / "best.pt", weights_only=True)["spec"]
    assert spec["class_names"] == ["dark", "bright"] and spec["input_shape"] == [1, 8, 8]
    capsys.readouterr()
    assert run_in_process("eval", "ckpt=run") == 2
    assert "add data._target_=shapes.make to this command" in capsys.readouterr().err
    assert run_in_process("eval", "ckpt=run", "data._target_=shapes.make") == 0
    capsys.readouterr()
    assert run_in_process("predict", "ckpt=run", "input=bright.png", "format=json") == 0
    assert json.loads(capsys.readouterr().out)[0]["prediction"] == "bright"


def test_user_dataset_without_preprocessing_says_predict_cannot_run(data_project, capsys):
    assert run_in_process("train", "--config-dir", "conf", "data=shapes", "data.preprocessing=null", "trainer.max_epochs=1",
                          "hydra.run.dir=run") == 0
    capsys.readouterr()
    assert run_in_process("predict", "ckpt=run", "input=bright.png") == 2
    err = capsys.readouterr().err
    assert "data._target_=shapes.make, whose config states no data.preprocessing: predict cannot turn files" in err


def test_check_data_on_a_user_dataset_says_what_it_checks(data_project, capsys):
    assert run_in_process("check-data", "--config-dir", "conf", "data=shapes") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nettrain: check-data cannot look inside data._target_=shapes.make: its samples are read one by one "
                   "by a Dataset, not held in memory; it checks data=imagefolder, csv, text, text_lm and in-memory "
                   "datasets"], err


def test_bad_user_datasets_are_one_line(data_project, capsys):
    base = ["train", "--config-dir", "conf", "data=shapes", "trainer.max_epochs=1", "hydra.run.dir=run"]
    cases = [(["data._target_=shapes.Pictures", "~data.n"], "must yield (tensor, label) pairs, but item 0 is (Image, int)"),
             (["data.class_names=null"], "give data.class_names"),
             (["data.preprocessing.image_size=32"], "it makes inputs of shape [1, 32, 32], but the dataset yields [1, 8, 8]")]
    for overrides, message in cases:
        assert run_in_process(*base, *overrides) == 2, overrides
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (overrides, err)


def test_torch_and_user_losses_by_target(data_project, capsys):
    fast = ["trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    assert run_in_process("train", "loss=custom", "loss._target_=torch.nn.MultiMarginLoss", *fast, "hydra.run.dir=a") == 0
    assert run_in_process("eval", "ckpt=a") == 0  # torch's own loss runs no user code: no confirmation needed
    assert run_in_process("train", "loss=custom", "loss._target_=mylosses.smooth_ce", "+loss.smoothing=0.1", *fast,
                          "hydra.run.dir=b") == 0
    capsys.readouterr()
    assert run_in_process("eval", "ckpt=b") == 2
    assert "add loss._target_=mylosses.smooth_ce" in capsys.readouterr().err
    assert run_in_process("eval", "ckpt=b", "loss._target_=mylosses.smooth_ce") == 0
    capsys.readouterr()
    assert run_in_process("train", "loss=custom", "loss._target_=mylosses.per_sample", *fast, "hydra.run.dir=c") == 2
    assert "loss._target_=mylosses.per_sample must return a scalar tensor" in capsys.readouterr().err
    assert run_in_process("train", "loss=custom", *fast, "hydra.run.dir=d") == 2
    assert "missing loss._target_" in capsys.readouterr().err


def test_resume_last_continues_the_newest_run_and_says_when_there_is_none(tmp_path, capsys):
    assert run_in_process("train", "resume=last") == 2
    assert "resume=last: no run with a checkpoint under" in capsys.readouterr().err
    for name in ("older", "newer"):
        assert run_in_process("train", "trainer.max_epochs=1", f"hydra.run.dir=outputs/x/{name}") == 0
    assert run_in_process("train", "resume=latest", "trainer.max_epochs=2") == 0
    assert metrics(tmp_path / "outputs" / "x" / "newer")["epochs"] == 2
    assert metrics(tmp_path / "outputs" / "x" / "older")["epochs"] == 1


def test_a_users_own_module_named_memory_is_not_taken_for_nettrains(tmp_path, monkeypatch, user_code):
    # model.memory is nettrain's memory of table rows; a user's net may call a part of itself `memory`.
    (tmp_path / "recurrent.py").write_text(
        "from torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, in_channels: int, num_classes: int):\n"
        "        super().__init__()\n"
        "        self.backbone, self.memory = nn.Flatten(), nn.Linear(in_channels * 64, 32)  # digits: 8x8\n"
        "        self.head = nn.Linear(32, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.head(self.memory(self.backbone(x)))\n")
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "recurrent.yaml").write_text("_target_: recurrent.Net\n")
    monkeypatch.chdir(tmp_path)
    assert run_in_process("train", "--config-dir", "conf", "model=recurrent", "trainer.max_epochs=1") == 0
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert metrics(run_dir)["status"] == "completed"
    assert "training rows" not in (run_dir / "train.log").read_text()


def test_a_users_model_arguments_are_passed_as_they_are_even_when_named_like_nettrains_keys(tmp_path, monkeypatch,
                                                                                           user_code):
    # `hidden` is a list for model=mlp and `channels` one for model=cnn; for a user's model they are its own.
    (tmp_path / "wide.py").write_text(
        "from torch import nn\n\n"
        "def net(num_features: int, num_classes: int, hidden: int, channels: str, memory: str):\n"
        "    assert channels == 'rgb' and memory == 'none'\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "wide.yaml").write_text(
        "_target_: wide.net\nhidden: 48\nchannels: rgb\nmemory: none\n")
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,y\n" + "".join(f"{i % 7},{i % 3},{i % 2}\n" for i in range(40)))
    monkeypatch.chdir(tmp_path)
    assert run_in_process("train", "--config-dir", "conf", "model=wide", "data=csv", f"data.path={rows}",
                          "data.target=y", "trainer.max_epochs=1", "hydra.run.dir=run") == 0
    assert metrics(tmp_path / "run")["status"] == "completed"
