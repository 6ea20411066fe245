"""The bodies the routes take, typed (pydantic: they are also the OpenAPI schema at /docs), and the one line a
malformed body is answered with: not UTF-8, not JSON, not the object a route takes."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator

from nettrain.serving.errors import RequestError, describe_value


class Body(BaseModel):
    """A JSON object with exactly the fields a route names (an unknown one is refused, not ignored)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def parse(cls, value: Any) -> Body:
        """The typed body, or the one-line 422 naming its first problem."""
        if not isinstance(value, dict):
            raise RequestError(f"the body must be a JSON object like {cls.example()}, not {describe_value(value)}")
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            raise RequestError(_first_problem(e, cls)) from None

    @classmethod
    def example(cls) -> str:
        return "{}"


class PredictRequest(Body):
    inputs: list[Any] = Field(description="images as base64 strings, table rows as objects of column -> value, or "
                                          "texts as strings (GET /info says which this model takes)")

    @classmethod
    def example(cls) -> str:
        return '{"inputs": [...]}'


class FeedbackRequest(Body):
    id: str | None = Field(None, description="the id of a prediction this server made")
    input: Any = Field(None, description="or an input it never predicted, as POST /predict takes it")
    label: Any = Field(description="what it is: one of the model's classes, or a number for regression")

    @model_validator(mode="after")
    def _one_of_id_or_input(self) -> FeedbackRequest:
        given = {"id", "input"} & self.model_fields_set
        if len(given) != 1:
            raise ValueError("give either id (a prediction of this server) or input (a new case), "
                             + ("not both" if given else "one of them"))
        if "input" in given and self.input is None:
            raise ValueError("input is null: give the input as POST /predict takes it")
        return self

    @classmethod
    def example(cls) -> str:
        return '{"id": "...", "label": "..."}'


class GenerateRequest(Body):
    prompt: StrictStr = Field("", description="what the text starts with (empty: a new line)")
    max_new_tokens: StrictInt = Field(200, ge=1, description="tokens to write after the prompt")
    temperature: float = Field(0.8, ge=0, allow_inf_nan=False, description="0: always the most likely token")
    top_k: StrictInt | None = Field(200, ge=1, description="draw among the k most likely tokens; null: all")
    seed: StrictInt = Field(0, ge=0, description="the draws' seed: the same request writes the same text")
    stream: StrictBool = Field(False, description="true: the text as plain text, streamed as it is written")

    @classmethod
    def example(cls) -> str:
        return '{"prompt": "...", "max_new_tokens": 200}'


def _first_problem(e: ValidationError, model: type[Body]) -> str:
    error = e.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    allowed = ", ".join(model.model_fields)
    if error["type"] == "missing":
        return f"missing {where!r} in the body; it takes {model.example()}"
    if error["type"] == "extra_forbidden":
        return f"unknown field {where!r} in the body; allowed: {allowed}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def read_json(body: bytes) -> Any:
    """A request body as JSON: strict UTF-8, standard JSON (no NaN or Infinity), every string valid Unicode."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RequestError(f"the body is not UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start})", 400) from None
    if not text.strip():
        raise RequestError("the body is empty: send a JSON object", 400)
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
        # A lone surrogate ("\ud800") parses, but no file or tokenizer can hold it: refuse it here, once.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except json.JSONDecodeError as e:
        raise RequestError(f"the body is not JSON: {e.msg} at line {e.lineno} column {e.colno}", 400) from None
    except UnicodeEncodeError:
        raise RequestError("the body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode", 400) from None
    except RecursionError:
        raise RequestError("the body's JSON is nested too deeply", 400) from None
    except ValueError as e:  # e.g. an integer of over 4300 digits
        raise RequestError(f"the body is not usable JSON: {e}", 400) from None
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")
