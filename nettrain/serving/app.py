"""The HTTP app of `nettrain serve`: every route of the server is one function in `add_routes` below, which only
reads the request and hands it to the `Service` (`POST /generate`, a language model's text, is one of them, its
body typed in `serving/requests.py`); the token, the body limit and the one-line errors apply to every route.

Every error is answered `{"error": "one line"}` with a 4xx status (5xx only for the server's own trouble: busy,
a full disk, a failing model), never with a traceback; the server keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from nettrain import __version__
from nettrain.errors import UserError, first_line
from nettrain.serving.errors import RequestError
from nettrain.serving.guard import Guard
from nettrain.serving.requests import Body, FeedbackRequest, GenerateRequest, PredictRequest, read_json
from nettrain.serving.service import Service

log = logging.getLogger("nettrain")


def create_app(service: Service) -> FastAPI:
    """The app over `service`: started and stopped with the server (the batcher runs while it serves)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="nettrain serve", version=__version__, lifespan=lifespan,
                  description=f"Predictions and feedback for {service.loaded.path}")
    add_routes(app, service)
    add_error_answers(app)
    app.add_middleware(Guard, token=service.settings.token, max_body=service.settings.max_body)
    return app


def add_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", summary="the server is up: uptime, predictions and feedback so far, batch sizes")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/info", summary="what the model takes and answers: input kind, classes, task, run, limits")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post("/predict", summary="predictions for inputs (JSON), or for uploaded image files (multipart)",
              openapi_extra=schema(PredictRequest))
    async def predict(request: Request) -> dict[str, Any]:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            raws, names = await read_uploads(request, service)
        else:
            body = PredictRequest.parse(read_json(await request.body()))
            raws, names = body.inputs, [f"inputs[{i}]" for i in range(len(body.inputs))]
        return {"predictions": await service.predict(raws, names)}

    @app.post("/generate", summary="a language model's text after a prompt: JSON, or plain text streamed as written",
              openapi_extra=schema(GenerateRequest))
    async def generate(request: Request) -> Any:
        body = GenerateRequest.parse(read_json(await request.body()))
        if body.stream:
            return StreamingResponse(service.generate_stream(body), media_type="text/plain; charset=utf-8")
        return await service.generate(body, request.is_disconnected) or Response(status_code=499)  # nobody reads it

    @app.post("/feedback", summary="the true label of a prediction (by id) or of a new input, stored durably",
              openapi_extra=schema(FeedbackRequest))
    async def feedback(request: Request) -> dict[str, Any]:
        body = FeedbackRequest.parse(read_json(await request.body()))
        return await service.feedback(body.id, body.input, body.label)


def schema(body: type[Body]) -> dict[str, Any]:
    """The OpenAPI entry of a JSON body the route reads itself (to answer a bad one in one line)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body.model_json_schema()}}}}


async def read_uploads(request: Request, service: Service) -> tuple[list[bytes], list[str]]:
    """The files of a multipart upload (any field names), in order, each named by its field and file name."""
    if service.inputs.kind != "image":
        raise RequestError(f"file uploads are for image models; this model takes {service.inputs.kind} inputs: "
                           f'POST JSON {{"inputs": [...]}}', 415)
    limit = service.settings.max_batch
    try:
        form = await request.form(max_files=limit, max_fields=limit)
    except HTTPException as e:
        if "Too many files" in str(e.detail):
            raise RequestError(f"more than {limit} files in one request, over this server's max_batch={limit}: send "
                               f"them in several requests", 413) from None
        raise RequestError(f"cannot read the upload: {e.detail}", 400) from None
    try:
        raws, names = [], []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                raise RequestError(f"field {field!r} is not a file: upload images as files (curl -F {field}=@photo.jpg)")
            raws.append(await value.read())
            names.append(f"{field} ({value.filename})" if value.filename else field)
    finally:
        await form.close()
    if not raws:
        raise RequestError("no files in the upload: send images as multipart files (curl -F file=@photo.jpg)")
    return raws, names


def add_error_answers(app: FastAPI) -> None:
    """Every failure as `{"error": "one line"}`."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, e: RequestError) -> Response:
        return JSONResponse({"error": str(e)}, e.status, headers=e.headers)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError) -> Response:
        return JSONResponse({"error": first_line(e)}, 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        routes = ", ".join(f"{m} {r.path}" for r in app.routes for m in sorted(getattr(r, "methods", None) or ())
                           if m != "HEAD" and not r.path.startswith(("/docs", "/redoc", "/openapi")))
        message = {404: f"no route {request.url.path}; routes: {routes}",
                   405: f"{request.method} is not allowed on {request.url.path}; routes: {routes}"}
        return JSONResponse({"error": message.get(e.status_code, first_line(Exception(e.detail)))}, e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def gone(request: Request, e: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody reads it: the client left mid-body

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> Response:
        log.error("%s %s: internal error: %s", request.method, request.url.path, first_line(e))
        return JSONResponse({"error": f"internal error: {first_line(e)}"}, 500)
