"""What `nettrain serve` does for each route, apart from HTTP: a loaded model (`inference.load.Loaded`) answering
predictions through the batcher, remembering the last ones, and storing feedback on them durably."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from nettrain.config.suggest import did_you_mean
from nettrain.errors import UserError, os_error_line
from nettrain.inference.decision import Decision
from nettrain.inference.generate import LanguageModel, language_model
from nettrain.inference.load import Loaded
from nettrain.inference.predict import Prediction, predict_batch
from nettrain.serving.batching import Batcher
from nettrain.serving.errors import RequestError, describe_value
from nettrain.serving.feedback import Feedback, FeedbackStore
from nettrain.serving.inputs import inputs_for

WAITING_BATCHES = 16          # inputs queued beyond this many full batches are refused with 503 (the server is behind)
REMEMBER_BYTES = 256 * 2**20  # the remembered inputs' total size: fewer than `remember` when they are large images
CLASSES_SHOWN = 20            # an error lists at most this many of the model's classes
MAX_NEW_TOKENS = 4096         # the longest text one POST /generate writes: the server writes for many clients
LEFT_EVERY_S = 0.1            # how often a text being written checks that its client is still there


@dataclass
class Settings:
    """The keys of `nettrain serve` that shape the service (host and port are the server's)."""

    max_batch: int = 64            # inputs per model call, and per request
    max_body: int = 16 * 2**20     # bytes of a request body
    batch_wait_ms: float = 5.0     # how long the first input of a batch waits for others
    remember: int = 1000           # predictions kept for feedback by id
    token: str | None = None       # every request must carry `Authorization: Bearer TOKEN`


@dataclass
class _Remembered:
    item: Any                      # the input as parsed (image bytes, a typed row, a text)
    prediction: Any                # the class name, or the value
    size: int
    label: Any = None              # the feedback's label, once given


class Memory:
    """The last `count` predictions (and at most REMEMBER_BYTES of their inputs), by id, oldest forgotten first."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._entries: OrderedDict[str, _Remembered] = OrderedDict()
        self._bytes = 0

    def add(self, id: str, item: Any, prediction: Any) -> None:
        if not self.count:
            return
        size = _size(item)
        self._entries[id] = _Remembered(item, prediction, size)
        self._bytes += size
        while len(self._entries) > self.count or (self._bytes > REMEMBER_BYTES and len(self._entries) > 1):
            self._bytes -= self._entries.popitem(last=False)[1].size

    def get(self, id: str) -> _Remembered | None:
        return self._entries.get(id)


def _size(item: Any) -> int:
    if isinstance(item, (bytes, str)):
        return len(item)
    return sum(len(str(k)) + len(str(v)) for k, v in item.items())


class Service:
    """The model behind the routes. Async methods run on the server's event loop; the model, decoding and
    the feedback file's writes run in threads."""

    def __init__(self, loaded: Loaded, settings: Settings) -> None:
        self.loaded = loaded
        self.settings = settings
        self.inputs = inputs_for(loaded.spec, str(loaded.path))
        self.decision = Decision.from_checkpoint(loaded.decision, loaded.spec)
        self.batcher = Batcher(self._run, settings.max_batch, settings.batch_wait_ms / 1000,
                               settings.max_batch * WAITING_BATCHES)
        self.memory = Memory(settings.remember)
        self.store = FeedbackStore(loaded.run_dir)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="nettrain-feedback")  # one record at a time, in order
        self.started = time.time()
        self.counts: Counter[str] = Counter()
        # A language model writes one text at a time, in order, off the event loop.
        self.lm = language_model(loaded) if loaded.spec.task == "lm" else None
        self._writing = ThreadPoolExecutor(1, thread_name_prefix="nettrain-generate")
        self._stopping = threading.Event()  # set: the texts being written end where they are

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._stopping.set()
        self._writing.shutdown(wait=True)
        self._writer.shutdown(wait=True)
        self.store.close()

    # --- predict ---------------------------------------------------------------------------------------

    async def predict(self, raws: list[Any], names: list[str]) -> list[dict[str, Any]]:
        """An answer per input, in order: its id, label and probabilities (or value). `names` say where each
        input was in the request (inputs[3], a file's name) for the errors."""
        if not raws:
            raise RequestError('no inputs: give {"inputs": [...]} with at least one')
        if len(raws) > self.settings.max_batch:
            raise RequestError(f"{len(raws)} inputs in one request, over this server's max_batch={self.settings.max_batch}: "
                               f"send them in several requests", 413)
        with self.batcher.preparing():
            items, tensors = await asyncio.to_thread(self._prepare, raws, names)
        ids = [uuid.uuid4().hex for _ in items]
        predictions = await self.batcher.submit(list(zip(ids, tensors)))
        self.counts["predicted"] += len(items)
        for id, item, p in zip(ids, items, predictions):
            self.memory.add(id, item, p.prediction)
        return [self._answer(p) for p in predictions]

    def _prepare(self, raws: list[Any], names: list[str]) -> tuple[list[Any], list[Any]]:
        """(parsed inputs, model inputs): every one checked, the first bad one refused by its name."""
        items = [self.inputs.parse(raw, where) for raw, where in zip(raws, names)]
        return items, self.inputs.encode(items, names)

    def _run(self, batch: list[tuple[str, Any]]) -> list[Prediction]:
        """The model on one batch (in the batcher's thread); each prediction is named by its input's id."""
        ids = [id for id, _ in batch]
        return predict_batch(self.loaded, ids, self.inputs.collate([t for _, t in batch]), self.decision)

    def _answer(self, p: Prediction) -> dict[str, Any]:
        if self.loaded.spec.task == "regression":
            return {"id": p.input, "value": p.prediction}
        return {"id": p.input, "label": p.prediction, "probabilities": p.probabilities}

    # --- generate --------------------------------------------------------------------------------------

    async def generate(self, body: Any, left: Callable[[], Awaitable[bool]]) -> dict[str, Any] | None:
        """The text a language model writes after `body.prompt` (a `GenerateRequest`), whole; None when the client
        `left` (an awaitable asked every LEFT_EVERY_S) before it was: the text stops there, so a client that gave
        up on 4,096 tokens does not keep the others waiting for them."""
        lm, settings = self._writer_for(body)
        gone = threading.Event()

        def write() -> list[str]:
            pieces = itertools.takewhile(lambda _: not (gone.is_set() or self._stopping.is_set()),
                                         lm.stream(body.prompt, **settings))
            return list(pieces)[1:]  # after the prompt

        writing = asyncio.get_running_loop().run_in_executor(self._writing, write)
        while not (await asyncio.wait([writing], timeout=LEFT_EVERY_S))[0]:
            if await left():
                gone.set()
        pieces = await writing
        if gone.is_set():
            return None
        self.counts["generated"] += 1
        return {"prompt": body.prompt, "text": "".join(pieces), "max_new_tokens": body.max_new_tokens,
                "temperature": body.temperature, "top_k": body.top_k, "seed": body.seed}

    def generate_stream(self, body: Any) -> Iterator[str]:
        """The prompt, then the text as it is written (checked before the first piece: a refusal is a 4xx). The
        server stops asking for pieces when the client leaves; a shutdown ends the text where it is."""
        lm, settings = self._writer_for(body)
        self.counts["generated"] += 1
        return itertools.takewhile(lambda _: not self._stopping.is_set(), lm.stream(body.prompt, **settings))

    def _writer_for(self, body: Any) -> tuple[LanguageModel, dict[str, Any]]:
        if self.lm is None:
            raise RequestError(f"this model does not write text (a {self.loaded.spec.task} model of "
                               f"{self.inputs.kind} inputs): POST /predict", 400)
        if body.max_new_tokens > MAX_NEW_TOKENS:
            raise RequestError(f"max_new_tokens={body.max_new_tokens} is over this server's {MAX_NEW_TOKENS}: ask for "
                               f"fewer, or continue the text in another request", 413)
        try:
            self.lm.encode_prompt(body.prompt)
        except UserError as e:
            raise RequestError(str(e)) from None
        return self.lm, {"max_new_tokens": body.max_new_tokens, "temperature": body.temperature, "top_k": body.top_k,
                         "seed": body.seed}

    # --- feedback --------------------------------------------------------------------------------------

    async def feedback(self, id: str | None, raw: Any, label: Any) -> dict[str, Any]:
        """Store the true `label` of a prediction this server made (`id`) or of a new input (`raw`), on disk
        before answering whether the prediction was right."""
        if self.lm is not None:
            raise RequestError("this model writes text: it has no labels to take; it learns new text with nettrain "
                               f"update {self.loaded.path} data.path=TEXT")
        label = self._label(label)
        if id is None:
            items, _ = await asyncio.to_thread(self._prepare, [raw], ["input"])  # stored only if it could be predicted
            return await self._store(Feedback(uuid.uuid4().hex, self.inputs.kind, self.inputs.record(items[0]), label))
        entry = self.memory.get(id)
        if entry is None:
            raise RequestError(f"unknown id {id!r}: not one of the last {self.memory.count} predictions of this server "
                               f'(send {{"input": ..., "label": ...}} instead)', 404)
        if entry.label is not None:
            if entry.label == label:  # a retry of feedback already stored: the same answer, nothing stored twice
                return self._feedback_answer(id, label, entry.prediction)
            raise RequestError(f"feedback on {id} was already stored with label {entry.label!r}", 409)
        entry.label = label  # before the write: a concurrent second feedback on this id is a retry or a conflict
        correct = entry.prediction == label if self.loaded.spec.task != "regression" else None
        try:
            return await self._store(Feedback(id, self.inputs.kind, self.inputs.record(entry.item), label,
                                              prediction=entry.prediction, correct=correct))
        except RequestError:
            entry.label = None
            raise

    async def _store(self, record: Feedback) -> dict[str, Any]:
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.store.add, record)
        except OSError as e:  # a full or read-only disk: the client must know nothing was kept
            raise RequestError(f"feedback not stored: {os_error_line(e)}", 503) from None
        self.counts["feedback"] += 1
        return self._feedback_answer(record.id, record.label, record.prediction)

    def _feedback_answer(self, id: str, label: Any, prediction: Any) -> dict[str, Any]:
        answer = {"id": id, "label": label, "prediction": prediction, "stored": True}
        if prediction is None:
            return {**answer, "correct": None, "result": f"stored: {label!r} for an input this server never predicted"}
        if self.loaded.spec.task == "regression":
            return {**answer, "correct": None, "error": prediction - label,
                    "result": f"the model predicted {prediction:.6g}, off by {prediction - label:+.6g}"}
        right = prediction == label
        return {**answer, "correct": right, "result": f"right: the model predicted {label!r}" if right
                else f"wrong: the model predicted {prediction!r}, it is {label!r}"}

    def _label(self, label: Any) -> Any:
        """The label as a record keeps it: a class name of the model (an integer naming one is taken), or a number."""
        spec = self.loaded.spec
        if spec.task == "regression":
            if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
                raise RequestError(f"invalid label={label!r}: this model predicts a number; give a finite number, not "
                                   f"{describe_value(label)}")
            return float(label)
        name = str(label) if isinstance(label, int) and not isinstance(label, bool) else label
        if not isinstance(name, str) or name not in spec.class_names:
            shown = ", ".join(spec.class_names[:CLASSES_SHOWN])
            more = f", ... ({len(spec.class_names)} in all)" if len(spec.class_names) > CLASSES_SHOWN else ""
            guess = did_you_mean(name, spec.class_names) if isinstance(name, str) else ""
            raise RequestError(f"invalid label={label!r}: not a class of this model;{guess} its classes: {shown}{more}")
        return name

    # --- info, health ----------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        spec, run_dir = self.loaded.spec, self.loaded.run_dir
        decision = None if self.decision is None else {
            "positive_class": self.decision.positive_class, "threshold": self.decision.fixed,
            "rule": self.decision.describe()}
        return {"run": str(run_dir), "model": str(self.loaded.path), "parent": parent_of(run_dir),
                "task": spec.task, "classes": spec.class_names, "input": self.inputs.describe(), "decision": decision,
                "max_batch": self.settings.max_batch, "max_body": self.settings.max_body,
                "batch_wait_ms": self.settings.batch_wait_ms, "remember": self.settings.remember,
                "feedback": str(self.store.folder)}

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - self.started, 1),
                "predicted": self.counts["predicted"], "feedback": self.counts["feedback"],
                "generated": self.counts["generated"],
                "batches": {str(size): n for size, n in sorted(self.batcher.batch_sizes.items())}}


def parent_of(run_dir: Any) -> str | None:
    """The run this one was trained from, when its metrics.json names one under "lineage": {"parent": ...}."""
    try:
        lineage = json.loads((run_dir / "metrics.json").read_text()).get("lineage")
    except (OSError, ValueError, AttributeError):
        return None  # no metrics.json (a bare checkpoint or exported model): no known parent
    parent = lineage.get("parent") if isinstance(lineage, dict) else None
    return str(parent) if parent else None
