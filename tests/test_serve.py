"""`nettrain serve`, as a client sees it: predictions for images (base64 and multipart), table rows and texts,
feedback by id and by input that survives a kill -9, the token, the body limit, one-line errors for bad
requests, clients that disconnect, and concurrent requests batched on their way to the model."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import run_in_process, train
from nettrain.inference.load import load_model
from nettrain.inference.predict import predict
from nettrain.serving.app import create_app
from nettrain.serving.batching import Batcher
from nettrain.serving.errors import RequestError
from nettrain.serving.feedback import read_feedback
from nettrain.serving.network import listen
from nettrain.serving.server import start
from nettrain.serving.service import Service, Settings

TOKEN = "s3cret-token-0123456789"


@contextmanager
def serving(run: Path, **settings: object) -> Iterator[tuple[httpx.Client, Service]]:
    """A server for `run` on a free port of 127.0.0.1, in this process, and a client of it; stopped on exit."""
    service = Service(load_model(run, "cpu"), Settings(**settings))
    running = start(create_app(service), listen("127.0.0.1", 0))
    try:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            yield client, service
    finally:
        running.stop()
        assert not running.thread.is_alive()


def png(seed: int, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def error_of(response: httpx.Response) -> str:
    """The one line a refused request is answered with."""
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"], body
    return body["error"]


# --- the models: digits (images), a table (classification and regression), texts -------------------------

@pytest.fixture(scope="module")
def image_run(digits_run, tmp_path_factory):
    """The digits MLP in a run dir of this module's own: the feedback it gets never reaches other tests."""
    run = tmp_path_factory.mktemp("served") / "digits"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("feedback"))
    return run


@pytest.fixture(scope="module")
def image_server(image_run):
    with serving(image_run, batch_wait_ms=2, remember=3) as (client, service):
        yield client, service


@pytest.fixture(scope="module")
def table_runs(tmp_path_factory):
    """A classifier (failed: yes/no) and a regressor (load) on the same generated sensor rows."""
    tmp = tmp_path_factory.mktemp("table")
    rows = [{"temperature": 20 + i % 30, "machine": "ab"[i % 2], "load": round(0.5 * (i % 30) + (i % 2), 2),
             "failed": "yes" if i % 30 > 20 else "no"} for i in range(200)]
    path = tmp / "sensors.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    common = ["data=csv", f"data.path={path}", "data.categorical=[machine]", "trainer.max_epochs=2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        classifier = train(tmp, *common, "data.target=failed", "data.drop=[load]", name="classifier")
        regressor = train(tmp, *common, "data.target=load", "data.drop=[failed]", "data.task=regression", "loss=mse",
                          name="regressor")
    return classifier, regressor


WORDS = {"card": ["card", "atm", "pin", "swallowed", "blocked"], "travel": ["flight", "hotel", "airport", "trip", "abroad"]}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    path = tmp / "texts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["message", "intent"])
        for _ in range(40):
            for label, words in WORDS.items():
                writer.writerow([" ".join(rng.sample(words, 3) + rng.sample(["my", "the", "is", "please"], 2)), label])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        return train(tmp, "data=text", f"data.path={path}", "data.text=message", "data.target=intent", "model=bag",
                     "model.buckets=1000", "model.dim=16", "data.batch_size=8", "optimizer.lr=0.01",
                     "trainer.max_epochs=4", name="text")


# --- predict -------------------------------------------------------------------------------------------

def test_images_as_base64_and_multipart_get_what_nettrain_predict_says(image_server, tmp_path):
    client, _ = image_server
    images = [png(1), png(2, (30, 20), "RGB")]  # any size and mode: resized and converted as validation did
    answer = client.post("/predict", json={"inputs": [b64(images[0]), "data:image/png;base64," + b64(images[1])]})
    assert answer.status_code == 200, answer.text
    served = answer.json()["predictions"]
    for data, p in zip(images, served):
        (tmp_path / "x.png").write_bytes(data)
        local = predict(image_server[1].loaded.path, tmp_path / "x.png", device="cpu").predictions[0]
        assert p["label"] == local.prediction and list(p["probabilities"]) == list(local.probabilities)
        assert p["probabilities"] == pytest.approx(local.probabilities, abs=1e-6)
        assert re.fullmatch(r"[0-9a-f]{32}", p["id"])
    uploaded = client.post("/predict", files=[("file", ("a.png", images[0], "image/png")),
                                              ("file", ("b.png", images[1], "image/png"))])
    assert uploaded.status_code == 200, uploaded.text
    got = uploaded.json()["predictions"]
    for p, q in zip(got, served):
        assert p["label"] == q["label"] and p["probabilities"] == pytest.approx(q["probabilities"], abs=1e-6)
    assert len({p["id"] for p in served + got}) == 4


def test_info_says_what_a_client_must_send_and_names_the_parent_run(image_server, image_run, tmp_path):
    client, _ = image_server
    info = client.get("/info").json()
    assert info["input"]["kind"] == "image" and info["input"]["image_size"] == 8 and info["input"]["channels"] == 1
    assert info["classes"] == [str(d) for d in range(10)] and info["task"] == "classification"
    assert info["run"] == str(image_run) and info["parent"] is None and info["max_batch"] == 64
    assert info["max_body"] == 16 * 2**20 and info["remember"] == 3
    child = tmp_path / "child"
    shutil.copytree(image_run, child, ignore=shutil.ignore_patterns("feedback"))
    record = json.loads((child / "metrics.json").read_text())
    (child / "metrics.json").write_text(json.dumps({**record, "lineage": {"parent": str(image_run)}}))
    assert Service(load_model(child, "cpu"), Settings()).info()["parent"] == str(image_run)


def test_an_exported_onnx_file_is_served_and_its_feedback_reaches_its_run(image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(image_run, run, ignore=shutil.ignore_patterns("feedback"))
    assert run_in_process("export", str(run), "quantize=int8") == 0
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in ("best.int8.onnx", "best.int8.json"):
        shutil.copy(run / "export" / name, shipped / name)
    (tmp_path / "x.png").write_bytes(png(1))
    for model_file, feedback_dir in ((run / "export" / "best.int8.onnx", run), (shipped / "best.int8.onnx", shipped)):
        with serving(model_file) as (client, service):
            assert client.get("/info").json()["model"] == str(model_file)
            [p] = client.post("/predict", json={"inputs": [b64(png(1))]}).json()["predictions"]
            local = predict(model_file, tmp_path / "x.png", device="cpu").predictions[0]  # onnxruntime, as served
            assert p["label"] == local.prediction and p["probabilities"] == pytest.approx(local.probabilities, abs=1e-6)
            assert client.post("/feedback", json={"id": p["id"], "label": "7"}).json()["stored"] is True
        # In its run's export/ folder, the file's feedback is the run's: `nettrain update RUN` learns from it.
        assert [r.label for r in read_feedback(feedback_dir)] == ["7"]


def test_table_rows_with_missing_values_and_a_regressor_answers_values(table_runs):
    classifier, regressor = table_runs
    with serving(classifier) as (client, _):
        answer = client.post("/predict", json={"inputs": [{"temperature": 45, "machine": "a"},
                                                          {"temperature": None, "machine": None},
                                                          {"temperature": "21.5", "machine": "never seen"}]})
        assert answer.status_code == 200, answer.text
        for p in answer.json()["predictions"]:
            assert set(p["probabilities"]) == {"no", "yes"} and sum(p["probabilities"].values()) == pytest.approx(1)
        for row, message in [({"temperature": 1}, "inputs[0]: no column 'machine' (give null for a missing value)"),
                             ({"temperature": 1, "machine": "a", "load": 3}, "inputs[0]: unknown column 'load'"),
                             ({"temperature": "hot", "machine": "a"}, "column 'temperature' takes a number (or null), not 'hot'"),
                             ({"temperature": 1e39, "machine": "a"}, "values must be finite"),
                             ({"temperature": 1, "machine": ["a"]}, "column 'machine' takes a category"),
                             ("45,a", "this model takes table rows: an object of column -> value, not a string")]:
            refused = client.post("/predict", json={"inputs": [row]})
            assert refused.status_code == 422 and message in error_of(refused)
    with serving(regressor) as (client, service):
        [p] = client.post("/predict", json={"inputs": [{"temperature": 30, "machine": "b"}]}).json()["predictions"]
        assert set(p) == {"id", "value"} and isinstance(p["value"], float)
        stored = client.post("/feedback", json={"id": p["id"], "label": 4.5}).json()
        assert stored["error"] == pytest.approx(p["value"] - 4.5) and stored["correct"] is None
        assert "finite number" in error_of(client.post("/feedback", json={"id": p["id"], "label": "high"}))
        [record] = read_feedback(service.loaded.run_dir)
        assert record.input == {"temperature": 30.0, "machine": "b"} and record.label == 4.5


def test_texts_and_the_wrong_kind_of_input(text_run):
    with serving(text_run) as (client, _):
        answer = client.post("/predict", json={"inputs": ["my card swallowed by the atm", "the hotel airport trip"]})
        assert [p["label"] for p in answer.json()["predictions"]] == ["card", "travel"]
        # batched with a longer text, a text is padded and predicted the same
        alone = client.post("/predict", json={"inputs": ["pin blocked"]}).json()["predictions"][0]
        padded = client.post("/predict", json={"inputs": ["pin blocked", "flight " * 40]}).json()["predictions"][0]
        assert padded["probabilities"] == pytest.approx(alone["probabilities"], abs=1e-5)
        for inputs, status, message in [([{"text": "hi"}], 422, "inputs[0]: this model takes texts: a string, not an object"),
                                        (["fine", "   "], 422, "inputs[1]: empty text"),
                                        ([3], 422, "inputs[0]: this model takes texts: a string, not a number")]:
            refused = client.post("/predict", json={"inputs": inputs})
            assert refused.status_code == status and message in error_of(refused)
        upload = client.post("/predict", files=[("file", ("a.png", png(0), "image/png"))])
        assert upload.status_code == 415 and "file uploads are for image models" in error_of(upload)


# --- feedback ------------------------------------------------------------------------------------------

def test_feedback_by_id_and_by_input_is_stored_before_the_answer(image_server):
    client, service = image_server
    [p] = client.post("/predict", json={"inputs": [b64(png(7))]}).json()["predictions"]
    other = str((int(p["label"]) + 1) % 10)
    wrong = client.post("/feedback", json={"id": p["id"], "label": int(other)})  # an integer naming a class
    assert wrong.status_code == 200 and wrong.json()["correct"] is False and wrong.json()["prediction"] == p["label"]
    assert wrong.json()["result"] == f"wrong: the model predicted {p['label']!r}, it is {other!r}"
    assert client.post("/feedback", json={"id": p["id"], "label": other}).json() == wrong.json()  # a retry
    assert client.post("/feedback", json={"id": p["id"], "label": p["label"]}).status_code == 409
    [q] = client.post("/predict", json={"inputs": [b64(png(8))]}).json()["predictions"]
    assert client.post("/feedback", json={"id": q["id"], "label": q["label"]}).json()["correct"] is True
    new = client.post("/feedback", json={"input": b64(png(9)), "label": "3"}).json()
    assert new["prediction"] is None and new["correct"] is None and new["stored"] is True
    records = {r.id: r for r in read_feedback(service.loaded.run_dir)}
    assert (records[p["id"]].label, records[p["id"]].prediction, records[p["id"]].correct) == (other, p["label"], False)
    assert records[q["id"]].correct is True and base64.b64decode(records[new["id"]].input) == png(9)
    assert records[p["id"]].kind == "image" and base64.b64decode(records[p["id"]].input) == png(7)
    for body, status, message in [({"id": "nope", "label": "3"}, 404, "unknown id 'nope': not one of the last 3"),
                                  ({"id": q["id"], "label": "cat"}, 422, "invalid label='cat': not a class of this model"),
                                  ({"input": "bm90IGFuIGltYWdl", "label": "3"}, 422, "input: cannot read the image"),
                                  ({"label": "3"}, 422, "give either id"),
                                  ({"id": q["id"], "input": "x", "label": "3"}, 422, "not both"),
                                  ({"id": q["id"]}, 422, "missing 'label'")]:
        refused = client.post("/feedback", json=body)
        assert refused.status_code == status and message in error_of(refused), refused.text
    for seed in range(3):  # remember=3: the oldest prediction is forgotten
        client.post("/predict", json={"inputs": [b64(png(seed))]})
    assert client.post("/feedback", json={"id": q["id"], "label": "3"}).status_code == 404


def test_a_disk_that_refuses_feedback_and_a_failing_model_are_one_line_and_the_server_goes_on(image_server, monkeypatch):
    client, service = image_server
    [p] = client.post("/predict", json={"inputs": [b64(png(21))]}).json()["predictions"]

    def full_disk(record: object) -> None:
        raise OSError(28, "No space left on device", str(service.store.path))

    with monkeypatch.context() as patched:
        patched.setattr(service.store, "add", full_disk)
        refused = client.post("/feedback", json={"id": p["id"], "label": "1"})
        assert refused.status_code == 503 and error_of(refused).startswith("feedback not stored: cannot write or read")
    assert client.post("/feedback", json={"id": p["id"], "label": "1"}).json()["stored"] is True  # nothing half-kept

    def broken(batch: object) -> None:
        raise RuntimeError("out of memory\nmore lines of a traceback")

    with monkeypatch.context() as patched:
        patched.setattr(service.loaded, "model", broken)
        failed = client.post("/predict", json={"inputs": [b64(png(22))]})
        assert failed.status_code == 500 and error_of(failed) == "the model failed on this batch: out of memory"
    assert client.post("/predict", json={"inputs": [b64(png(22))]}).status_code == 200


def _serve_subprocess(run: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`nettrain serve RUN port=0 ...` as from a shell, and its URL once it serves."""
    proc = subprocess.Popen([sys.executable, "-m", "nettrain", "serve", str(run), "port=0", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stderr:
        if match := re.search(r" on (http://127\.0\.0\.1:\d+)$", line.strip()):
            return proc, match.group(1)
    raise AssertionError(f"the server never said where it serves (exit {proc.wait()})")


def test_acknowledged_feedback_survives_kill_9_and_sigterm_stops_cleanly(image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(image_run, run, ignore=shutil.ignore_patterns("feedback"))
    before = sorted(p.name for p in run.rglob("*"))
    killed, killed_url = _serve_subprocess(run)
    stopped, stopped_url = _serve_subprocess(run, f"token={TOKEN}")
    try:
        ids = []
        for i in range(5):
            answer = httpx.post(f"{killed_url}/feedback", json={"input": b64(png(i)), "label": str(i)}, timeout=30)
            assert answer.status_code == 200
            ids.append(answer.json()["id"])
        os.kill(killed.pid, signal.SIGKILL)  # no chance to flush or close anything
        killed.wait(10)
        assert [r.id for r in read_feedback(run)] == ids
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{stopped_url}/feedback", json={"input": b64(png(9)), "label": "9"}, headers=auth).status_code == 200
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(30) == 0
        assert "stopped (SIGTERM): 0 prediction(s), 1 feedback record(s)" in stopped.stderr.read()
    finally:
        for proc in (killed, stopped):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [r.label for r in read_feedback(run)] == ["0", "1", "2", "3", "4", "9"]
    assert sorted(p.name for p in run.rglob("*") if "feedback" not in p.parts and p.name != "feedback") == before


# --- the token, the body limit, bad requests ------------------------------------------------------------

def test_a_token_and_the_body_limit_are_checked_before_the_body_is_read(image_run):
    with serving(image_run, token=TOKEN, max_body=4096) as (client, _):
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            refused = client.get("/health", headers=headers)
            assert refused.status_code == 401 and "missing or wrong token" in error_of(refused)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/health", headers=auth).json()["status"] == "ok"
        assert client.post("/predict", json={"inputs": [b64(png(0))]}, headers=auth).status_code == 200
        big = client.post("/predict", content=b"x" * 5000, headers=auth)
        assert big.status_code == 413 and error_of(big) == "the body is 5000 bytes, over this server's max_body=4096"
        chunked = client.post("/predict", content=iter([b"x" * 3000, b"x" * 3000]), headers=auth)  # no Content-Length
        assert chunked.status_code == 413 and "over this server's max_body=4096" in error_of(chunked)
        assert client.post("/predict", content=b"x" * 5000).status_code == 401  # the token is checked first
        # a client announcing a huge body is refused from its headers alone, before sending a byte of it
        with socket.create_connection((client.base_url.host, client.base_url.port), timeout=10) as raw:
            raw.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                        f"Content-Length: {10**12}\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize("body, status, message", [
    (b'{"inputs": [', 400, "the body is not JSON: Expecting value at line 1 column 13"),
    (b"\xff\xfe{}", 400, "the body is not UTF-8 (byte 0xff at offset 0)"),
    (b"", 400, "the body is empty"),
    (b'{"inputs": [NaN]}', 400, "NaN is not a JSON number"),
    (b'{"inputs": ["\\ud800"]}', 400, "lone surrogate"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    (b'[1, 2]', 422, "the body must be a JSON object like {\"inputs\": [...]}, not a list"),
    (b'{"inputs": []}', 422, "no inputs"),
    (b'{"inputs": "abc"}', 422, "inputs: Input should be a valid list"),
    (b'{"inputs": [], "top_k": 3}', 422, "unknown field 'top_k' in the body; allowed: inputs"),
    (b'{"input": ["x"]}', 422, "missing 'inputs' in the body"),
    (b'{"inputs": [{"a": 1}]}', 422, "inputs[0]: this model takes images: a base64 string of an image file, not an object"),
    (b'{"inputs": ["not base64!"]}', 422, "inputs[0]: not a base64 string"),
    (b'{"inputs": ["aGVsbG8gd29ybGQ="]}', 422, "inputs[0]: cannot read the image: cannot identify image file"),
    (('{"inputs": [' + ", ".join(['"x"'] * 65) + "]}").encode(), 413, "65 inputs in one request, over this server's max_batch=64"),
])
def test_bad_requests_get_one_line_and_the_server_keeps_serving(image_server, body, status, message):
    client, _ = image_server
    refused = client.post("/predict", content=body)
    assert refused.status_code == status and message in error_of(refused), refused.text
    assert client.get("/health").json()["status"] == "ok"


def test_unknown_routes_and_methods_and_bad_uploads(image_server):
    client, _ = image_server
    routes = "GET /health, GET /info, POST /predict, POST /generate, POST /feedback"
    assert f"no route /nope; routes: {routes}" in error_of(client.get("/nope"))
    assert client.get("/predict").status_code == 405 and "GET is not allowed on /predict" in error_of(client.get("/predict"))
    bad = client.post("/predict", files=[("photo", ("x.jpg", b"\xff\xd8\xff\xe0 broken", "image/jpeg"))])
    assert bad.status_code == 422 and error_of(bad).startswith("photo (x.jpg): cannot read the image")
    text = client.post("/predict", data={"caption": "hi"}, files=[("file", ("a.png", png(0), "image/png"))])
    assert text.status_code == 422 and "field 'caption' is not a file" in error_of(text)
    empty = client.post("/predict", files=[("file", ("a.png", b"", "image/png"))])
    assert empty.status_code == 422 and "file (a.png): an empty file" in error_of(empty)


# --- clients that go away, batching --------------------------------------------------------------------

def test_clients_that_disconnect_do_not_break_the_batch_of_the_others(image_run):
    with serving(image_run, batch_wait_ms=300) as (client, service):
        host, port = client.base_url.host, client.base_url.port
        body = json.dumps({"inputs": [b64(png(1))]}).encode()
        head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        results: list[httpx.Response] = []
        others = [threading.Thread(target=lambda i=i: results.append(
            client.post("/predict", json={"inputs": [b64(png(i))]}))) for i in range(3)]
        for thread in others[:2]:
            thread.start()
        with socket.create_connection((host, port)) as gone:  # a whole request, then gone before the answer
            gone.sendall(head.encode() + body)
        with socket.create_connection((host, port)) as half:  # half a body, then gone
            half.sendall(head.encode() + body[: len(body) // 2])
        others[2].start()
        for thread in others:
            thread.join(30)
        assert [r.status_code for r in results] == [200, 200, 200]
        assert client.get("/health").json()["status"] == "ok"


def test_concurrent_requests_are_batched(image_run):
    with serving(image_run, batch_wait_ms=200, max_batch=8) as (client, service):
        async def many() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as async_client:
                return await asyncio.gather(*[async_client.post("/predict", json={"inputs": [b64(png(i))]})
                                              for i in range(16)])

        answers = asyncio.run(many())
        assert all(a.status_code == 200 for a in answers)
        batches = {int(size): n for size, n in client.get("/health").json()["batches"].items()}
        assert sum(size * n for size, n in batches.items()) == 16
        assert max(batches) > 1 and max(batches) <= 8, batches  # requests shared model calls, never over max_batch


def test_the_batcher_skips_requests_whose_client_left_and_refuses_when_far_behind():
    seen: list[list[int]] = []

    def model(batch: list[int]) -> list[int]:
        seen.append(batch)
        time.sleep(0.05)
        return [x * 10 for x in batch]

    async def scenario() -> None:
        batcher = Batcher(model, max_batch=4, wait_s=0.05, max_waiting=6)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1, 2]))
        left = asyncio.ensure_future(batcher.submit([3]))
        await asyncio.sleep(0)
        left.cancel()  # its client disconnected while it waited
        assert await first == [10, 20]
        with pytest.raises(asyncio.CancelledError):
            await left
        waiting = [asyncio.ensure_future(batcher.submit([i, i])) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError, match="the server is busy: 6 inputs wait"):
            await batcher.submit([9])
        assert [await w for w in waiting] == [[0, 0], [10, 10], [20, 20]]
        await batcher.stop()

    asyncio.run(scenario())
    assert seen[0] == [1, 2] and all(len(b) <= 4 for b in seen)


# --- the command ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["port=http"], "invalid port='http': must be an integer from 0 to 65535"),
    (["port=70000"], "invalid port=70000"),
    (["max_batch=0"], "invalid max_batch=0"),
    (["max_body=lots"], "invalid max_body='lots': give bytes, or a number with KB, MB, GB, KiB, MiB or GiB"),
    (["max_body=10"], "must be between 1024 and"),
    (["batch_wait_ms=-1"], "invalid batch_wait_ms=-1"),
    (["host=0.0.0.0"], "host=0.0.0.0 lets other machines connect: give token=SECRET"),
    (["token=short"], "invalid token: give at least 16 printable characters"),
    (["access_log=maybe"], "invalid access_log='maybe'"),
    (["prot=8000"], "unknown argument prot=...; did you mean port?"),
    (["host=no.such.host.invalid", f"token={TOKEN}"], "invalid host='no.such.host.invalid'"),
])
def test_bad_arguments_are_one_line_and_exit_2(image_run, args, message, capsys):
    assert run_in_process("serve", str(image_run), *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_port_in_use_is_said_before_the_model_loads(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run_in_process("serve", str(tmp_path / "no-run-here"), f"port={port}") == 2
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err


def test_the_serving_benchmark_runs_as_its_docstring_shows(image_run, tmp_path):
    shutil.copytree(image_run, tmp_path / "digits")  # a run it finds in --out is reused, not trained again
    script = Path(__file__).parents[1] / "scripts" / "bench_serve.py"
    proc = subprocess.run([sys.executable, script, "--models", "digits,lm", "--clients", "1,2", "--requests", "8",
                           "--texts", "2", "--tokens", "20", "--json", "--out", tmp_path],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    digits, lm = rows[:4], rows[4:]
    assert [(r["mode"], r["clients"]) for r in digits] == [("in-process, batch 1", 1), ("in-process, batch 64", 1),
                                                           ("HTTP", 1), ("HTTP", 2)]
    assert all(r["inputs_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in digits)
    assert [(r["mode"], r["clients"]) for r in lm] == [("in-process", 1), ("HTTP, whole", 1), ("HTTP, whole", 2),
                                                       ("HTTP, streamed", 1), ("HTTP, streamed", 2)]
    assert all(r["tokens_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in lm)
