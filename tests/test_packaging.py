"""Install and packaging: extras per feature, metadata, and the README's commands that CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_extras_metadata_and_license():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"onnx", "sweep", "slurm", "mlflow", "wandb", "timm", "hf", "serve", "docs", "test", "dev"} <= set(extras)
    # What the tests import: every extra; the first command (the default job) needs none of them.
    assert extras["test"][0] == "nettrain[onnx,sweep,slurm,mlflow,wandb,timm,hf,serve,docs]"
    assert extras["dev"] == ["nettrain[test]"]
    assert not any("mlflow" in d or "wandb" in d or "transformers" in d for d in project["dependencies"])
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    assert project["authors"] and any("Python :: 3.10" in c for c in project["classifiers"])
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_the_readme_shows_cpu_and_cuda_torch_and_ci_runs_its_first_commands():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "--index-url https://download.pytorch.org/whl/cu" in readme
    first, second = re.findall(r"```bash\n(.*?)\n```", readme, re.S)[:2]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert first in ci and second in ci
    assert first.endswith("pip install -e . && nettrain train") and "[test]" in second  # light first, the tests' next
    head = readme[:readme.index(second)]
    assert "download.pytorch.org/whl/cpu" in head  # the CPU-only torch right under the first command
    assert "minutes" in readme[readme.index(second):readme.index(second) + 400]  # the test time by the test command
