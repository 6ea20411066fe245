"""Benchmark: does nettrain's training loop cost anything over the loop everyone writes by hand?

    .venv/bin/python scripts/bench.py                  # a table
    .venv/bin/python scripts/bench.py --json           # [{"case", "nettrain", "raw", "ratio", ...}, ...]
    .venv/bin/python scripts/bench.py --cases mlp_digits --rounds 9 --no-startup --no-ddp
    .venv/bin/python scripts/bench.py --cases gpt_char --no-startup --no-ddp --set trainer.threads=1

For each case, in this one process: the same model (nettrain's builders), data, batch size and
precision, trained by `nettrain.training.loop.fit` (its history's `train_samples_per_sec`) and by a minimal
hand-written PyTorch loop, and by PyTorch Lightning's Trainer where it is installed; training
samples/s, median over rounds that alternate them (so load on the machine hits all alike), the
first epoch of every round being warm-up; a ratio is the median of the rounds' side-by-side ratios.
DDP cases add nettrain's samples/s with 1 and 2 worker processes (`trainer.devices`, CPU). Then
the wall clock of commands in fresh processes: import, `--help`, a config error, a run that trains
two batches (start-up and set-up) and the whole default `nettrain train` (objects {case, seconds}).
Data is generated in a temp dir (tests/datagen.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import datagen  # noqa: E402  (the tests' data generators: MNIST/CIFAR files, image folders)
from nettrain import runtime  # noqa: E402
from nettrain.config.resolvers import register_resolvers  # noqa: E402
from nettrain.config.rules import validate  # noqa: E402
from nettrain.data.base import DataContext  # noqa: E402
from nettrain.data.build import build_data  # noqa: E402
from nettrain.data.loaders import BlockLoader  # noqa: E402
from nettrain.models.build import build_model  # noqa: E402
from nettrain.models.losses import build_loss  # noqa: E402
from nettrain.records.console import console  # noqa: E402
from nettrain.training.launch import launch  # noqa: E402
from nettrain.training.loop import fit  # noqa: E402
from nettrain.training.optim import build_optimizer  # noqa: E402


@dataclass
class Case:
    name: str
    overrides: list[str]                        # `{root}` is the case's data dir
    epochs: int                                 # measured epochs per round (after one warm-up epoch)
    make_data: Callable[[Path, bool], Any] | None = None   # (root, on a GPU: full size)
    gpu_only: bool = False
    ddp: bool = False                           # also measured 1 -> 2 processes
    # On a GPU, real-size epochs (thousands of steps a round, not a few batches): these overrides win.
    gpu: list[str] = field(default_factory=list)
    gpu_epochs: int | None = None
    note: str | None = None                     # printed under the table: what a sample of this case is


def cifar10(root: Path, full: bool) -> None:
    """CIFAR-10's python batches, generated (50,000 training images on a GPU); torchvision checks its
    files against the official checksums, which generated ones cannot match (the tests do the same)."""
    import torchvision.datasets.cifar

    torchvision.datasets.cifar.check_integrity = lambda *args, **kwargs: True
    datagen.cifar10_files(root, per_batch=10_000 if full else 30)


CASES = [
    Case("mlp_digits", ["model=mlp"], epochs=4, ddp=True, gpu_epochs=40),
    # A model so small that its arithmetic is nothing: what is measured is each step's overhead, the loop's own.
    Case("tiny_overhead", ["model=mlp", "model.hidden=[4]", "model.dropout=0", "data.batch_size=16"], epochs=6,
         gpu_epochs=60),
    Case("mlp_table10k", ["model=mlp", "data=csv", "data.path={root}/machines.csv", "data.target=failure",
                          "data.drop=[id,wear]", "data.categorical=[model]"], epochs=2,
         make_data=lambda root, full: datagen.machines_csv(root / "machines.csv", rows=10_000), gpu_epochs=10),
    Case("cnn_28px", ["model=cnn", "data=mnist", "data.root={root}", "data.augment=none",
                      "trainer.limit_train_batches=8"], epochs=2,
         make_data=lambda root, full: datagen.mnist_files(root, train=60_000 if full else 2400, test=20), ddp=True,
         gpu=["trainer.limit_train_batches=null"]),
    Case("resnet18_32px", ["model=resnet18", "data=cifar10", "data.root={root}", "data.augment=none",
                           "data.batch_size=32", "trainer.limit_train_batches=3"], epochs=2,
         make_data=cifar10, gpu=["data.batch_size=512", "trainer.limit_train_batches=null"]),
    # A character-level GPT (nanoGPT's laptop size) on generated text: batches of random blocks of token ids.
    Case("gpt_char", ["data=text_lm", "model=gpt", "data.path={root}/text.txt", "model.n_layer=4", "model.n_head=4",
                      "model.n_embd=128", "model.dropout=0", "model.samples=0", "data.block_size=64", "data.batch_size=16",
                      "data.batches_per_epoch=40", "optimizer=adamw"], epochs=2,
         make_data=lambda root, full: datagen.sentences(root / "text.txt", lines=20_000), gpu_epochs=10,
         gpu=["model.n_layer=6", "model.n_head=6", "model.n_embd=384", "data.block_size=256", "data.batch_size=64",
              "data.batches_per_epoch=100"],
         note="gpt_char: a sample is a block of 64 characters (256 on a GPU); tokens/s = samples/s x that"),
    Case("resnet50_224px", ["model=resnet50", "data=imagefolder", "data.root={root}", "data.image_size=224",
                            "data.cache=true", "data.augment=none", "data.batch_size=128"], epochs=2,
         make_data=lambda root, full: datagen.image_folder(root, per_class=2500, classes=("cat", "dog")), gpu_only=True),
]


def config(overrides: list[str]) -> DictConfig:
    """The run's config exactly as `nettrain train OVERRIDES` composes it."""
    register_resolvers()
    with initialize_config_module("nettrain.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    return cfg


def median_rate(rates: list[list[float]]) -> float:
    """Median samples/s over rounds, each round's first epoch dropped (warm-up)."""
    return statistics.median(r for rnd in rates for r in rnd[1:])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nettrain_rates(cfg: DictConfig, epochs: int, work: Path) -> list[float]:
    cfg = cfg.copy()
    OmegaConf.update(cfg, "trainer.max_epochs", epochs, merge=False)
    with tempfile.TemporaryDirectory(dir=work) as run_dir:
        result = fit(cfg, Path(run_dir))
    return [h["train_samples_per_sec"] for h in result["history"]]


def hand_steps(train: Any, batch: int, limit: int | None) -> int:
    """Batches an epoch of the hand-written loops: as many as the data holds (a language model's: as many as
    nettrain's epoch draws), at most `limit`."""
    return min(len(train) if isinstance(train, BlockLoader) else len(train.y) // batch, limit or math.inf)


def hand_batches(train: Any, batch: int, steps: int, epoch: int, device: torch.device) -> Any:
    """The batches a hand-written loop draws: slices of a shuffled order of in-memory tensors; for a language
    model, random blocks of its token ids and the tokens after them (nanoGPT's get_batch, in one gather)."""
    if isinstance(train, BlockLoader):
        offsets = torch.arange(train.block_size + 1, device=train.ids.device)
        for _ in range(steps):
            starts = torch.randint(len(train.ids) - train.block_size, (batch,), device=train.ids.device)
            blocks = train.ids[starts.unsqueeze(1) + offsets].long()
            yield blocks[:, :-1].to(device, non_blocking=True), blocks[:, 1:].to(device, non_blocking=True)
        return
    order = torch.randperm(len(train.y), device=train.x.device)
    for k in range(steps):
        idx = order[k * batch:(k + 1) * batch]
        x, y = train.x[idx].to(device, non_blocking=True), train.y[idx].to(device, non_blocking=True)
        yield (train.transform(x, epoch, k) if train.transform is not None else x), y


def raw_rates(cfg: DictConfig, epochs: int) -> list[float]:
    """The loop one writes by hand: shuffle, slice, forward, loss, backward, step. Device, threads,
    precision and seed are set as nettrain sets them; the model, optimizer, loss and data are
    nettrain's builders' (the data's per-batch normalization included)."""
    rt = runtime.setup(cfg.trainer)
    data = build_data(cfg.data, DataContext(seed=cfg.trainer.seed, device=rt.device, resident=rt.device.type == "cuda"))
    model = build_model(cfg.model, data.spec)
    batch = cfg.data.batch_size
    if rt.device.type == "cpu":  # as nettrain chooses them: a language model's work counts its tokens
        tokens = data.spec.input_shape[0] if data.spec.task == "lm" else 1
        torch.set_num_threads(cfg.trainer.threads or runtime.choose_threads(model, batch * tokens)[0])
    channels_last = rt.channels_last and getattr(model, "convolutional", False)
    model.to(rt.device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = build_optimizer(cfg.optimizer, model)
    criterion = build_loss(cfg.loss, data.spec).to(rt.device)
    steps = hand_steps(data.train, batch, cfg.trainer.limit_train_batches)
    model.train()
    rates = []
    for epoch in range(epochs):
        sync(rt.device)
        start = time.perf_counter()
        for x, y in hand_batches(data.train, batch, steps, epoch, rt.device):
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp_dtype is not None):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(rt.device)
        rates.append(steps * batch / (time.perf_counter() - start))
    return rates


def lightning_rates(cfg: DictConfig, epochs: int) -> list[float] | None:
    """The same model and batches through PyTorch Lightning's Trainer; None when it is not installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            return None
    logging.getLogger(pl.__name__).setLevel(logging.WARNING)  # its banners and tips, not the table's business
    rt = runtime.setup(cfg.trainer)
    data = build_data(cfg.data, DataContext(seed=cfg.trainer.seed, device=rt.device, resident=rt.device.type == "cuda"))
    model = build_model(cfg.model, data.spec)
    criterion = build_loss(cfg.loss, data.spec)
    batch = cfg.data.batch_size
    steps = hand_steps(data.train, batch, cfg.trainer.limit_train_batches)

    class Batches:
        """The raw loop's batches (shuffle and slice, or random blocks), as the iterable Lightning asks for."""

        def __len__(self) -> int:
            return steps

        def __iter__(self) -> Any:
            return hand_batches(data.train, batch, steps, 0, rt.device)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.criterion = model, criterion

        def training_step(self, b: Any, _: int) -> torch.Tensor:
            return self.criterion(self.net(b[0]), b[1])

        def configure_optimizers(self) -> Any:
            return build_optimizer(cfg.optimizer, self.net)

    class Clock(pl.Callback):
        """Epoch end to epoch end: everything the Trainer does in an epoch (it fetches the first
        batch before the epoch-start hook)."""

        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_train_start(self, *_: Any) -> None:
            self.last = time.perf_counter()

        def on_train_epoch_end(self, *_: Any) -> None:
            sync(rt.device)
            now = time.perf_counter()
            self.rates.append(steps * batch / (now - self.last))
            self.last = now

    clock = Clock()
    precision = {None: "32-true", torch.bfloat16: "bf16-mixed"}[rt.amp_dtype]
    pl.Trainer(max_epochs=epochs, accelerator=rt.device.type, devices=1, precision=precision, logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[clock]).fit(Module(), train_dataloaders=Batches())
    return clock.rates


def ddp_rates(cfg: DictConfig, devices: int, epochs: int, work: Path) -> list[float]:
    cfg = cfg.copy()
    OmegaConf.update(cfg, "trainer.max_epochs", epochs, merge=False)
    OmegaConf.update(cfg, "trainer.devices", devices, merge=False)
    with tempfile.TemporaryDirectory(dir=work) as run_dir:
        result = launch(cfg, Path(run_dir))
    return [h["train_samples_per_sec"] for h in result["history"]]


def seconds(command: list[str], repeats: int, cwd: Path, exit_code: int = 0) -> float:
    """Median wall clock of a command (which must end with `exit_code`), run `repeats` times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != exit_code:
            raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr}")
    return statistics.median(times)


def ratio(a: float, b: float) -> float:
    return round(a / b, 3)


def paired_ratio(ours: list[list[float]], theirs: list[list[float]]) -> float:
    """The median over rounds of (this round's median samples/s / the other's), warm-up epochs dropped."""
    return round(statistics.median(median_rate([a]) / median_rate([b]) for a, b in zip(ours, theirs)), 3)


def measure_case(case: Case, cfg: DictConfig, epochs: int, rounds: int, ddp: bool, work: Path) -> dict[str, Any]:
    """{case, nettrain, raw, ratio} in samples/s, with `lightning`, `lightning_ratio` where it is
    installed and `ddp_1`, `ddp_2`, `ddp_scaling` (nettrain with 1 and 2 processes) for DDP cases."""
    ours, raw, peer = [], [], []
    for r in range(rounds):
        # Alternate who goes first, so neither always runs right after the other's checkpoint writes.
        runs = [lambda: ours.append(nettrain_rates(cfg, 1 + epochs, work)),
                lambda: raw.append(raw_rates(cfg, 1 + epochs))]
        for run in runs if r % 2 == 0 else runs[::-1]:
            run()
        peer.append(lightning_rates(cfg, 1 + epochs))
    result = {"case": case.name, "nettrain": round(median_rate(ours)), "raw": round(median_rate(raw))}
    # Ratios of runs made side by side, then their median: the machine's load drifts (a shared host
    # swings the raw loop's own samples/s by 20 %), and pairing cancels what both runs of a round felt.
    result["ratio"] = paired_ratio(ours, raw)
    if peer[0] is not None:
        result["lightning"] = round(median_rate(peer))
        result["lightning_ratio"] = paired_ratio(peer, raw)
    if ddp:
        result["ddp_1"] = round(median_rate([ddp_rates(cfg, 1, 2 + epochs, work)]))
        result["ddp_2"] = round(median_rate([ddp_rates(cfg, 2, 2 + epochs, work)]))
        result["ddp_scaling"] = ratio(result["ddp_2"], result["ddp_1"])
    return result


def thread_rates(cfg: DictConfig, epochs: int, work: Path) -> dict[str, Any]:
    """nettrain's samples/s with trainer.threads=null (its own choice), 1 and every core."""
    cores = runtime.available_cores()
    out: dict[str, Any] = {}
    for label, threads in (("threads_auto", None), ("threads_1", 1), (f"threads_{cores}", cores)):
        tuned = cfg.copy()
        OmegaConf.update(tuned, "trainer.threads", threads, merge=False)
        out[label] = round(median_rate([nettrain_rates(tuned, 1 + epochs, work)]))
    return out


def startup_times(repeats: int, work: Path) -> list[dict[str, Any]]:
    """{case, seconds}: the median wall clock of commands a user runs, each in a fresh process."""
    nettrain = [sys.executable, "-m", "nettrain"]
    commands = {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "import nettrain.training.loop": [sys.executable, "-c", "import nettrain.training.loop"],
        "nettrain --help": [*nettrain, "--help"],
        "nettrain train optimizer.lr=-1 (config error, exit 2)": [*nettrain, "train", "optimizer.lr=-1"],
        "nettrain train debug=fast (start-up, set-up, 2 batches)":
            [*nettrain, "train", "debug=fast", f"hydra.run.dir={work}/fast/${{now:%H%M%S%f}}"],
        "nettrain train (the default run: 20 epochs)": [*nettrain, "train", f"hydra.run.dir={work}/run/${{now:%H%M%S%f}}"],
    }
    return [{"case": name, "seconds": round(seconds(command, repeats, work, 2 if "exit 2" in name else 0), 2)}
            for name, command in commands.items()]


def print_table(rows: list[dict[str, Any]], notes: list[str], args: argparse.Namespace) -> None:
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {runtime.available_cores()} cores"
    print(f"training samples/s on {where}: median over {args.rounds} rounds, warm-up epochs dropped")
    print(f"{'case':<16} {'nettrain':>10} {'raw loop':>10} {'ratio':>6} {'lightning':>10} {'ratio':>6}")
    for r in [r for r in rows if "ratio" in r]:
        peer = f"{r['lightning']:>10,} {r['lightning_ratio']:>6.3f}" if "lightning" in r else f"{'-':>10} {'-':>6}"
        print(f"{r['case']:<16} {r['nettrain']:>10,} {r['raw']:>10,} {r['ratio']:>6.3f} {peer}")
    if any("ddp_scaling" in r for r in rows):
        print(f"\ndata-parallel (trainer.devices), samples/s\n{'case':<16} {'1 process':>10} {'2 processes':>12} {'scaling':>8}")
        for r in [r for r in rows if "ddp_scaling" in r]:
            print(f"{r['case']:<16} {r['ddp_1']:>10,} {r['ddp_2']:>12,} {r['ddp_scaling']:>8.2f}")
    if any("threads_1" in r for r in rows):
        print("\nCPU threads (trainer.threads), nettrain samples/s")
        for r in [r for r in rows if "threads_1" in r]:
            print(f"{r['case']:<16} " + "  ".join(f"{k.removeprefix('threads_')} {v:,}" for k, v in r.items()
                                                  if k.startswith("threads_")))
    if any("seconds" in r for r in rows):
        print(f"\nwall clock, seconds (median of {args.repeats})")
        for r in [r for r in rows if "seconds" in r]:
            print(f"{r['case']:<58} {r['seconds']:>6.2f}")
    for note in dict.fromkeys(notes):
        print(note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    parser.add_argument("--rounds", type=int, default=7, help="rounds alternating nettrain and the raw loop")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timed command")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 1 -> 2 process scaling")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up and default-run timings")
    parser.add_argument("--threads", action="store_true", help="also nettrain's samples/s with threads auto, 1, all (CPU)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every case, e.g. --set trainer.threads=1 on a busy machine")
    args = parser.parse_args()
    wanted = args.cases.split(",")
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        parser.error(f"unknown case(s) {', '.join(sorted(unknown))}; allowed: {', '.join(c.name for c in CASES)}")
    console.quiet = True  # fit's end-of-run summaries would interleave with the table
    cuda = torch.cuda.is_available()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="nettrain-bench-") as tmp:
        work = Path(tmp)
        for case in [c for c in CASES if c.name in wanted]:
            if case.gpu_only and not cuda:
                notes.append(f"{case.name}: skipped (GPU only)")
                continue
            root = work / case.name
            root.mkdir()
            if case.make_data:
                case.make_data(root, cuda)
            # Validation is not what is measured: one batch of it keeps the rounds short.
            overrides = case.overrides + (case.gpu if cuda else [])
            cfg = config([o.format(root=root) for o in overrides] + ["trainer.limit_val_batches=1", "checkpoint.save_top_k=0",
                                                                      *args.set])
            epochs = (case.gpu_epochs or case.epochs) if cuda else case.epochs
            # DDP scaling on the CPU's processes; GPUs need a multi-GPU machine (see README, torchrun).
            rows.append(measure_case(case, cfg, epochs, args.rounds, case.ddp and not args.no_ddp and not cuda, work))
            if args.threads and not cuda:
                rows[-1] |= thread_rates(cfg, epochs, work)
            if case.note:
                notes.append(case.note)
            if "lightning" not in rows[-1]:
                notes.append("lightning: not installed (pip install lightning), not measured")
        if not args.no_startup:
            rows += startup_times(args.repeats, work)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, notes, args)


if __name__ == "__main__":
    main()
