"""Serving: requests/s and latency of `nettrain serve` with 1, 8 and 64 concurrent clients, against the same
predictor called in-process (no HTTP, no batching across requests).

    .venv/bin/python scripts/bench_serve.py --data DATA        # digits MLP, cats/dogs CNN (DATA/cats_dogs), TREC text (DATA/text)
    .venv/bin/python scripts/bench_serve.py                              # no data at hand: generated photos, texts
    .venv/bin/python scripts/bench_serve.py --models digits --clients 1,8 --requests 100 --json
    .venv/bin/python scripts/bench_serve.py --data DATA --models lm --clients 1,4      # POST /generate, tokens/s

Each model is trained small in a fresh process (`nettrain train`, a few epochs: its speed, not its accuracy,
is measured): the digits MLP (`nettrain train`, 8x8 images), the cats/dogs CNN (`+experiment=cats_dogs`, 64 px,
flip TTA, on --data's cats_dogs/ or on generated photos) and the TREC question model (`+experiment=text_intents`,
on --data's text/ or on generated questions). Then `nettrain serve RUN port=0` runs in a process of its own, as
a user starts it, and an async httpx client sends --requests requests of one input each (a PNG/JPEG as base64,
a text) from N concurrent clients: requests/s over the whole level, p50/p99 latency, and the mean batch the
model saw (from GET /health). In-process: the same predictor (the server's input decoding and
`inference.predict.predict_batch`, on as many CPU threads as the server takes, in a process of its own and a
thread as the server runs it), one input at a time, then batches of --batch (at least 10 of them).

The language model (`lm`: the CPU recipe's GPT, 100 steps on --data's tiny shakespeare or on generated text)
writes --texts texts of --tokens tokens per level: in-process (`stream`, one after the other), then POST
/generate whole (the server writes them one at a time) and streamed (side by side): tokens/s over the level, and
the p50/p99 seconds of a text.

Client and server share the machine's cores: on a 2-core machine the client's own work is a real part of each
request's cost, so requests/s there are a floor. Runs land in a temp dir unless --out is given (an existing
run there is reused).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
import datagen  # noqa: E402  (the tests' data generators: image folders)

MODELS = ("digits", "cats_dogs", "text", "lm")


def nettrain(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "nettrain", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"nettrain {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")


def encoded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def digits_case(out: Path, data: Path | None) -> tuple[Path, list[Any], str]:
    """The digits MLP and 8x8 PNGs of its own val images (as a camera would have saved them)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    run = out / "digits"
    if not (run / "checkpoints" / "best.pt").exists():
        nettrain("train", f"hydra.run.dir={run}", "trainer.max_epochs=3", cwd=out)
    inputs = []
    for image in load_digits().images[:200]:
        buffer = io.BytesIO()
        Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(buffer, "PNG")
        inputs.append(base64.b64encode(buffer.getvalue()).decode())
    return run, inputs, "MLP, 8x8 PNG"


def cats_dogs_case(out: Path, data: Path | None) -> tuple[Path, list[Any], str]:
    """The cats/dogs recipe's CNN (64 px, flip TTA) and the val photos as base64 JPEGs."""
    root = data / "cats_dogs" if data else datagen.image_folder(out / "photos", per_class=60)
    run = out / "cats_dogs"
    if not (run / "checkpoints" / "best.pt").exists():
        nettrain("train", f"hydra.run.dir={run}", "+experiment=cats_dogs", f"data.root={root}", "trainer.max_epochs=1",
                 "trainer.max_steps=60", cwd=out)
    files = sorted(p for p in (root / "val").rglob("*") if p.is_file())
    where = "200x200 JPEG" if data else "generated JPEG"
    return run, [encoded(p) for p in files[:200]], f"CNN 64 px + flip TTA, {where}"


def text_case(out: Path, data: Path | None) -> tuple[Path, list[Any], str]:
    """The text_intents recipe (bag of words and pairs) on TREC, and TREC's test questions."""
    if data:
        train, text, target = data / "text" / "trec_train.csv", "text", "label-coarse"
        with open(data / "text" / "trec_test.csv", newline="") as f:
            texts = [row[text] for row in csv.DictReader(f)][:200]
    else:
        rng = random.Random(0)
        words = {"LOC": "where city country river", "NUM": "how many much year", "HUM": "who person wrote invented"}
        rows = [(" ".join(rng.sample(w.split(), 3) + ["is", "the", "?"]), label) for label, w in words.items() for _ in range(80)]
        train, text, target = out / "questions.csv", "text", "label"
        with open(train, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
        texts = [r[0] for r in rows[::2]][:200]
    run = out / "text"
    if not (run / "checkpoints" / "best.pt").exists():
        nettrain("train", f"hydra.run.dir={run}", "+experiment=text_intents", f"data.path={train}", f"data.text={text}",
                 f"data.target={target}", "trainer.max_epochs=2", cwd=out)
    return run, texts, "bag of words (text_intents), TREC questions" if data else "bag of words, generated questions"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def in_process(run: Path, inputs: list[Any], requests: int, batch: int) -> list[dict[str, Any]]:
    """The server's own predictor without HTTP: one input at a time, then batches of `batch`."""
    import torch

    from nettrain.inference.decision import Decision
    from nettrain.inference.load import load_model
    from nettrain.inference.predict import predict_batch
    from nettrain.runtime import choose_threads
    from nettrain.serving.inputs import inputs_for

    loaded = load_model(run, "cpu")
    torch.set_num_threads(choose_threads(loaded.model, batch)[0])  # as nettrain serve chooses them
    reader = inputs_for(loaded.spec, str(run))
    decision = Decision.from_checkpoint(loaded.decision, loaded.spec)

    def call(raws: list[Any]) -> None:
        names = [f"inputs[{i}]" for i in range(len(raws))]
        items = [reader.parse(raw, name) for raw, name in zip(raws, names)]
        predict_batch(loaded, names, reader.collate(reader.encode(items, names)), decision)

    def timed(size: int) -> tuple[list[float], float]:
        call(inputs[:size])  # warm-up
        latencies = []
        started = time.perf_counter()
        for i in range(0, max(requests, 10 * size), size):
            t = time.perf_counter()
            call([inputs[(i + k) % len(inputs)] for k in range(size)])
            latencies.append(time.perf_counter() - t)
        return latencies, time.perf_counter() - started

    rows = []
    for size in (1, batch):
        # In a thread of its own, as the server runs the model: on a busy machine PyTorch's OpenMP threads
        # spinning on the main thread made the CNN's call 10x slower there (50-60 ms against 4-5 ms).
        with ThreadPoolExecutor(1) as thread:
            latencies, elapsed = thread.submit(timed, size).result()
        rows.append({"mode": f"in-process, batch {size}", "clients": 1, "requests": len(latencies),
                     "inputs_per_s": len(latencies) * size / elapsed, "p50_ms": 1000 * statistics.median(latencies),
                     "p99_ms": 1000 * percentile(latencies, 0.99), "mean_batch": size, "threads": torch.get_num_threads()})
    return rows


def start_server(run: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "nettrain", "serve", str(run), "port=0", "device=cpu", *extra],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    for line in proc.stderr:
        if match := re.search(r" on (http://\S+)$", line.strip()):
            return proc, match.group(1)
    raise SystemExit(f"nettrain serve {run} exited {proc.wait()} before serving")


def predicting(inputs: list[Any]) -> Callable[[Any, int], Awaitable[None]]:
    """Request i: POST /predict of one input."""
    async def send(http: Any, i: int) -> None:
        answer = await http.post("/predict", json={"inputs": [inputs[i % len(inputs)]]})
        if answer.status_code != 200:
            raise SystemExit(f"POST /predict answered {answer.status_code}: {answer.text}")
    return send


def writing(prompts: list[str], tokens: int, stream: bool) -> Callable[[Any, int], Awaitable[None]]:
    """Request i: POST /generate of `tokens` tokens after a prompt, whole or streamed (read to its end)."""
    async def send(http: Any, i: int) -> None:
        body = {"prompt": prompts[i % len(prompts)], "max_new_tokens": tokens, "seed": i, "stream": stream}
        async with http.stream("POST", "/generate", json=body) as answer:
            if answer.status_code != 200:
                raise SystemExit(f"POST /generate answered {answer.status_code}: {(await answer.aread()).decode()}")
            async for _ in answer.aiter_bytes():
                pass
    return send


async def load(url: str, send: Callable[[Any, int], Awaitable[None]], clients: int, requests: int) -> dict[str, Any]:
    """`requests` requests (`send` makes each) from `clients` concurrent clients, each an httpx.AsyncClient of its
    own (one pool shared by 64 clients costs httpx more than the server spends), connected before the clock starts."""
    import httpx

    latencies: list[float] = []
    counter = iter(range(requests))
    connected, go, ready = [0], asyncio.Event(), asyncio.Event()

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            await http.get("/health")  # the connection, opened before the clock starts
            connected[0] += 1
            if connected[0] == clients:
                ready.set()
            await go.wait()
            for i in counter:
                t = time.perf_counter()
                await send(http, i)
                latencies.append(time.perf_counter() - t)

    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        before = (await http.get("/health")).json()["batches"]
        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        await ready.wait()
        started = time.perf_counter()
        go.set()
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        after = (await http.get("/health")).json()["batches"]
    calls = {int(k): v - before.get(k, 0) for k, v in after.items()}
    batches = sum(calls.values())
    return {"mode": "HTTP", "clients": clients, "requests": requests, "inputs_per_s": requests / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 0.99),
            "mean_batch": sum(k * v for k, v in calls.items()) / batches if batches else 0.0}


def over_http(run: Path, inputs: list[Any], levels: list[int], requests: int, extra: list[str]) -> list[dict[str, Any]]:
    proc, url = start_server(run, extra)
    try:
        asyncio.run(load(url, predicting(inputs), 4, min(40, requests)))  # warm-up: the first calls
        return [asyncio.run(load(url, predicting(inputs), clients, max(requests, 4 * clients))) for clients in levels]
    finally:
        proc.terminate()
        proc.wait(30)


def lm_in_process(run: Path, prompts: list[str], requests: int, tokens: int) -> list[dict[str, Any]]:
    """The server's writer without HTTP: `requests` texts one after the other, on the threads the server takes."""
    import torch

    from nettrain.inference.generate import load_language_model, threads_for

    lm = load_language_model(run, "cpu")
    torch.set_num_threads(threads_for(lm)[0])
    list(lm.stream(prompts[0], max_new_tokens=tokens))  # warm-up
    latencies = []
    for i in range(requests):
        t = time.perf_counter()
        for _ in lm.stream(prompts[i % len(prompts)], max_new_tokens=tokens, seed=i):
            pass
        latencies.append(time.perf_counter() - t)
    return [{"mode": "in-process", "clients": 1, "requests": requests, "tokens_per_s": requests * tokens / sum(latencies),
             "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * percentile(latencies, 0.99)}]


def lm_over_http(run: Path, prompts: list[str], levels: list[int], requests: int, tokens: int) -> list[dict[str, Any]]:
    """POST /generate, whole texts (written one at a time) and streamed ones (side by side), at each level."""
    proc, url = start_server(run, [])
    try:
        asyncio.run(load(url, writing(prompts, tokens, False), 1, 2))  # warm-up
        rows = []
        for stream in (False, True):
            for clients in levels:
                row = asyncio.run(load(url, writing(prompts, tokens, stream), clients, max(requests, clients)))
                rows.append({**row, "mode": "HTTP, streamed" if stream else "HTTP, whole",
                             "tokens_per_s": row.pop("inputs_per_s") * tokens})
        return rows
    finally:
        proc.terminate()
        proc.wait(30)


def lm_case(out: Path, data: Path | None) -> tuple[Path, list[str], str]:
    """The CPU recipe's GPT (0.8M parameters, 64 characters of context), 100 steps on tiny shakespeare (--data) or
    on generated sentences, and prompts to continue."""
    text = data / "text" / "tinyshakespeare.txt" if data else datagen.sentences(out / "sentences.txt", lines=3000)
    run = out / "lm"
    if not (run / "checkpoints" / "best.pt").exists():
        nettrain("train", f"hydra.run.dir={run}", "+experiment=shakespeare_char_cpu", f"data.path={text}",
                 "trainer.max_steps=100", "data.batches_per_epoch=100", cwd=out)
    prompts = ["ROMEO:", "JULIET:", "First Citizen:"] if data else ["the cat", "a dog", "the moon"]
    return run, prompts, "GPT 0.8M (shakespeare_char_cpu), " + ("tiny shakespeare" if data else "generated text")


def lm_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | mode | clients | texts | tokens/s | p50 s | p99 s |", "|---|---|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['model']} | {r['mode']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.0f} | "
              f"{r['p50_ms'] / 1000:.2f} | {r['p99_ms'] / 1000:.2f} |" for r in rows]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | mode | clients | requests | inputs/s | p50 ms | p99 ms | mean batch |", "|---|---|--:|--:|--:|--:|--:|--:|"]
    lines += [f"| {r['model']} | {r['mode']} | {r['clients']} | {r['requests']} | {r['inputs_per_s']:.0f} | "
              f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="the shared data folder (cats_dogs/, text/); else generated data")
    parser.add_argument("--models", default="digits,cats_dogs,text", help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--clients", default="1,8,64", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=400, help="requests per level (at least 4 per client)")
    parser.add_argument("--batch", type=int, default=64, help="the in-process batch (the server's max_batch)")
    parser.add_argument("--serve", nargs="*", default=[], help="more nettrain serve arguments, e.g. batch_wait_ms=2")
    parser.add_argument("--tokens", type=int, default=500, help="tokens of each text the language model writes")
    parser.add_argument("--texts", type=int, default=8, help="texts per level for the language model")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="rows as JSON instead of a table")
    args = parser.parse_args()
    cases = {"digits": digits_case, "cats_dogs": cats_dogs_case, "text": text_case}
    levels = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        out = (args.out or Path(tmp)).resolve()
        out.mkdir(parents=True, exist_ok=True)
        rows, lm_rows = [], []
        for name in args.models.split(","):
            if name == "lm":
                run, prompts, what = lm_case(out, args.data.resolve() if args.data else None)
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                    local = fresh.submit(lm_in_process, run, prompts, args.texts, args.tokens).result()
                lm_rows += [{"model": what, **row} for row in local + lm_over_http(run, prompts, levels, args.texts,
                                                                                 args.tokens)]
                continue
            run, inputs, what = cases[name](out, args.data.resolve() if args.data else None)
            # In a fresh process, as the server has one: PyTorch's OpenMP threads, once set to 1 (the MLP) and then
            # to 2 in one process, made the CNN's call 20x slower (191 ms against 9.5 ms).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                local = fresh.submit(in_process, run, inputs, args.requests, args.batch).result()
            for row in local + over_http(run, inputs, levels, args.requests, [f"max_batch={args.batch}", *args.serve]):
                rows.append({"model": f"{name} ({what})", **row})
                print(f"{name}: {row['mode']}, {row['clients']} client(s): {row['inputs_per_s']:.0f}/s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows + lm_rows, indent=2))
    else:
        print("\n\n".join(([table(rows)] if rows else []) + ([lm_table(lm_rows)] if lm_rows else [])))
    print(f"\n{os.cpu_count()} CPU cores; client and server on the same machine", file=sys.stderr)


if __name__ == "__main__":
    main()
