"""The OpenAI-compatible HTTP API over the version the ChampionFollower holds.

    POST /v1/chat/completions   chat completion, streaming (SSE) and not; traced (serve/tracing.py);
                                response_format (json_object, json_schema) by constrained decoding
    POST /v1/feedback           {request_id, user, rating: up|down, correction?}: feedback on that trace
    GET  /v1/models             the served name, with the registered version behind it
    GET  /health                served version, the alias's version, versions that failed to load, the canary

During a canary (serve.canary) the `candidate` alias answers a sticky share of users (serve/canary.py);
the completion's system_fingerprint and the trace name the version, the trace's tags also the arm.

Every bad request gets a 4xx in OpenAI's error shape ({"error": {"message", "type", "param", "code"}})
and the server keeps serving: malformed JSON, a body that breaks the schema (no messages,
max_tokens <= 0, ...) -> 400; an unknown model -> 404; a prompt (plus max_tokens) over the
context length -> 400 context_length_exceeded. No champion loaded yet -> 503.

Decoding is greedy unless the request sets a temperature above 0: the same request gets the same
answer, as from `mlflow.pyfunc.load_model("models:/NAME@champion")`. Request and answer text are
never logged (they may hold personal data); log lines name versions and error kinds only.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool

from serve.backend import LoadedVersion, Sampling, eos_ids, prompt_ids
from serve.batching import Batcher, Job
from serve.canary import pick_arm, user_key
from serve.champion import ChampionFollower
from serve.engine import EngineError
from serve.structured import SchemaError, matcher_for
from serve.tracing import FeedbackRefused, RequestTracer, request_id

log = logging.getLogger(__name__)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_template_message(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(min_length=1, max_length=64)
    json_schema: dict = Field(default_factory=dict, alias="schema", description="{} allows any JSON value")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's structured outputs; decoded under the schema (serve/structured.py)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object: {name, schema, strict}")
        return self


class ChatRequest(BaseModel):
    """The part of OpenAI's chat completion request this server honours; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one answer per request")
    response_format: ResponseFormat | None = None
    # Who asks (OpenAI's end-user id and its successor); only hashed, to keep a user on one arm of a canary.
    user: str | None = None
    safety_identifier: str | None = None


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def schema_errors(err: ValidationError) -> RequestError:
    """A 400 naming each bad field; pydantic's messages, never the values sent (they may be personal)."""
    problems = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:5]]
    first = err.errors()[0]["loc"]
    return RequestError(400, "invalid request: " + "; ".join(problems), str(first[0]) if first else None)


def check_request(req: ChatRequest, loaded: LoadedVersion | None, served_name: str,
                  default_max_tokens: int) -> tuple[LoadedVersion, dict, Sampling]:
    """Everything that can be wrong with a request, found before any token is generated."""
    if req.model != served_name:
        raise RequestError(404, f"The model '{req.model}' does not exist; this server serves '{served_name}'",
                           "model", "model_not_found")
    if loaded is None:
        raise RequestError(503, f"{served_name} has no champion loaded yet", None, "no_champion")
    try:
        inputs = prompt_ids(loaded, [m.as_template_message() for m in req.messages])
    except Exception as err:  # the model's chat template refuses this conversation (e.g. role order)
        raise RequestError(400, f"messages do not fit the model's chat template: {type(err).__name__}: {err}",
                           "messages") from err
    prompt_tokens = inputs["input_ids"].shape[1]
    room = loaded.context_length - prompt_tokens
    asked = req.max_completion_tokens or req.max_tokens
    if room < 1 or (asked is not None and asked > room):
        raise RequestError(
            400, f"This model's maximum context length is {loaded.context_length} tokens. However, you requested "
            f"{prompt_tokens + (asked or 0)} tokens ({prompt_tokens} in the messages, {asked or 0} in the "
            "completion). Please reduce the length of the messages or completion.", "messages",
            "context_length_exceeded")
    stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    fmt = req.response_format
    try:
        matcher = matcher_for(fmt.type, fmt.json_schema and fmt.json_schema.json_schema, loaded.tokenizer,
                              eos_ids(loaded)) if fmt else None
    except SchemaError as err:
        raise RequestError(400, str(err), "response_format") from None
    return loaded, inputs, Sampling(asked or min(default_max_tokens, room), req.temperature, req.top_p, stop, matcher,
                                    fmt.model_dump(by_alias=True, exclude_none=True) if fmt else None)


def completion_body(cid: str, created: int, served_name: str, loaded: LoadedVersion, text: str, prompt_tokens: int,
                    completion_tokens: int, finish: str) -> dict:
    return {"id": cid, "object": "chat.completion", "created": created, "model": served_name,
            "system_fingerprint": f"{loaded.name}/v{loaded.version}",
            "choices": [{"index": 0, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def sse_events(cid: str, created: int, served_name: str, loaded: LoadedVersion, inputs, job: Job,
               tracer: RequestTracer, span):
    """The answer as chat.completion.chunk server-sent events, ending with [DONE]; the trace closes with it."""
    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served_name,
            "system_fingerprint": f"{loaded.name}/v{loaded.version}"}

    def event(delta: dict, finish: str | None = None) -> str:
        chunk = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    pieces = []
    try:
        for piece in job.pieces():
            if isinstance(piece, tuple):
                tracer.finish(span, completion_body(cid, created, served_name, loaded, "".join(pieces),
                                                   inputs["input_ids"].shape[1], piece[0], piece[1]))
                yield event({}, piece[1])
            else:
                pieces.append(piece)
                yield event({"content": piece})
    except Exception as err:  # headers are sent: the error goes in the stream, as OpenAI does
        log.exception("generation failed on %s version %s", loaded.name, loaded.version)
        tracer.fail(span, err)
        yield f"data: {json.dumps(error_body(f'generation failed: {type(err).__name__}', 'server_error'))}\n\n"
    yield "data: [DONE]\n\n"


class FeedbackRequest(BaseModel):
    """A user's rating of one answer, and optionally the answer they wanted."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, description="the completion's id (also the X-Request-Id header)")
    user: str = Field(min_length=1, max_length=200, description="who rates: one rating per user and request")
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, description="the answer the user wanted; not empty")

    @model_validator(mode="after")
    def _something_to_record(self) -> FeedbackRequest:
        if self.correction is not None and not self.correction.strip():
            raise ValueError("correction is empty: leave it out, or give the answer you wanted")
        if self.rating is None and self.correction is None:
            raise ValueError("give a rating ('up' or 'down'), a correction, or both")
        return self


def build_app(follower: ChampionFollower, tracer: RequestTracer, served_name: str, default_max_tokens: int = 256,
              batcher: Batcher | None = None, candidate: ChampionFollower | None = None, share: float = 0.0):
    """The FastAPI app; `follower` owns the loaded version and its polling thread, `tracer` the traces,
    `batcher` the decoding: serve/batching.py in-process (default: batches of up to 8), or an engine's
    serve/engine.py EngineDecoder. `candidate` follows the `candidate` alias during a canary; it answers
    `share` of users (serve/canary.py)."""
    from contextlib import asynccontextmanager

    batcher = batcher or Batcher()

    @asynccontextmanager
    async def lifespan(app):
        yield
        follower.stop()
        if candidate is not None:
            candidate.stop()
        batcher.stop()
        tracer.close()  # every rating accepted is written before the process ends

    app = FastAPI(title=f"tunegate: {served_name}", lifespan=lifespan)

    @app.exception_handler(RequestError)
    async def request_error(_request, err: RequestError):
        log.info("request refused (%s): %s", err.status, err.code or err.param)
        kind = "invalid_request_error" if err.status < 500 else "service_unavailable"
        return JSONResponse(error_body(err.message, kind, err.param, err.code), status_code=err.status)

    def parse(raw: bytes, schema):
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"The request body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise RequestError(400, "The request body must be a JSON object")
        try:
            return schema.model_validate(body)
        except ValidationError as err:
            raise schema_errors(err) from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse(await request.body(), ChatRequest)
        messages = [m.as_template_message() for m in req.messages]
        chosen, arm = pick_arm(follower, candidate, share, user_key(req.user or req.safety_identifier, messages))
        loaded, inputs, sampling = check_request(req, chosen, served_name, default_max_tokens)
        span = tracer.start(served_name, loaded, messages, {"max_tokens": sampling.max_tokens,
                                                             "temperature": req.temperature, "stream": req.stream},
                            arm)
        cid = request_id(span.trace_id) if span is not None else f"chatcmpl-{uuid.uuid4().hex}"
        created, headers = int(time.time()), {"X-Request-Id": cid}
        job = batcher.submit(loaded, inputs, sampling, messages)
        if req.stream:
            return StreamingResponse(sse_events(cid, created, served_name, loaded, inputs, job, tracer, span),
                                     media_type="text/event-stream", headers=headers)
        try:
            text, completion_tokens, finish = await run_in_threadpool(job.result)
        except Exception as err:
            tracer.fail(span, err)
            if isinstance(err, EngineError):
                raise RequestError(502, str(err), None, "engine_error") from None
            raise
        body = completion_body(cid, created, served_name, loaded, text, inputs["input_ids"].shape[1],
                               completion_tokens, finish)
        tracer.finish(span, body)
        return JSONResponse(body, headers=headers)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        """Rate an answer (up/down) and optionally correct it: MLflow feedback and expectation on its trace."""
        fb = parse(await request.body(), FeedbackRequest)
        try:
            return await run_in_threadpool(tracer.record_feedback, fb.request_id, fb.user, fb.rating, fb.correction)
        except FeedbackRefused as err:
            raise RequestError(err.status, err.message, "request_id" if err.status == 404 else None) from None

    @app.get("/v1/models")
    async def models():
        loaded = follower.current
        data = [] if loaded is None else [{
            "id": served_name, "object": "model", "created": int(time.time()), "owned_by": "tunegate",
            "version": loaded.version, "root": loaded.source,
            "context_length": loaded.context_length}]
        return {"object": "list", "data": data}

    @app.get("/health")
    async def health():
        loaded = follower.current
        canary = None if candidate is None else {
            "candidate": candidate.champion, "serving": candidate.current.version if candidate.current else None,
            "share": share, "load_errors": candidate.failed}
        return JSONResponse({"serving": loaded.version if loaded else None, "champion": follower.champion,
                             "canary": canary, "load_errors": follower.failed,
                             "dtype": loaded.dtype if loaded else None,
                             "feedback_pending": tracer.feedback.pending() if tracer.feedback else 0,
                             "batching": {"max_batch": batcher.max_batch, "recent_waves": batcher.waves[-20:]}},
                            status_code=200 if loaded else 503)

    return app
