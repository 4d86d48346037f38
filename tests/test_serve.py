"""The OpenAI-compatible server (`tunegate serve-model`) as a real process, talked to with the official client.

Two tiny-model LoRA versions with different weights answer the same greedy request differently, so a
promotion and a rollback are visible in the answers themselves.
"""

import json
import threading
import time

import httpx
import mlflow
import openai
import pytest
from mlflow import MlflowClient
from openai import OpenAI

from cli.main import main
from live_stack import serving
from lora_adapters import greedy_answer, make_lora_adapter
from serve.client import FeedbackRejected, send_feedback, wait_for_feedback
from serve.tracing import trace_id_of
from tasks.feedback import read_trace_feedback
from tasks.promote import promote_version, rollback
from tunegate.chat_model import log_chat_model
from tunegate.config import ServeConfig, TrackingConfig
from tunegate.registry import connect, ensure_registered_model
from tunegate.traces import CORRECTION, MODEL_NAME_TAG, MODEL_VERSION_TAG, RATING, answer_text

NAME = "serve-test"
QUESTION = [{"role": "user", "content": "Give three tips for staying healthy."}]
TOKENS = 10


def register_adapter(tracking, base, folder, seed, break_weights=False) -> str:
    """Register a LoRA version the way tasks/register.py does: raw adapter/, the chat MLflow Model, merged/."""
    adapter = make_lora_adapter(base, folder, seed)
    client, experiment_id = connect(tracking)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifacts(str(adapter), "adapter")
        logged = log_chat_model(str(adapter), "adapter", base)
        if break_weights:  # a version whose merged weights are corrupt: it must never serve
            broken = folder.parent / f"{folder.name}-broken"
            broken.mkdir()
            (broken / "model.safetensors").write_bytes(b"\x00" * 64)
            mlflow.log_artifacts(str(broken), "merged")
    ensure_registered_model(client, tracking.registered_model)
    version = client.create_model_version(
        tracking.registered_model, source=logged["model_uri"], run_id=run.info.run_id, model_id=logged["model_id"],
        tags={"weights": "adapter", "merged": logged["merged_uri"], "gate": "passed"})
    return str(version.version)


def version_answer(tracking, version, messages, max_new_tokens) -> str:
    """What the version's merged weights answer greedily, computed here without the server."""
    mv = MlflowClient(tracking.tracking_uri).get_model_version(NAME, version)
    return greedy_answer(mlflow.artifacts.download_artifacts(artifact_uri=mv.tags["merged"]), messages, max_new_tokens)


def cli_tracking(tracking) -> list[str]:
    return ["--config", "configs/tiny.yaml", "--set", f"tracking.tracking_uri={tracking.tracking_uri}",
            "--set", f"tracking.artifact_root={tracking.artifact_root}",
            "--set", f"tracking.experiment={tracking.experiment}",
            "--set", f"tracking.registered_model={tracking.registered_model}"]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_root=str(tmp / "artifacts"),
                              experiment="serve", registered_model=NAME)
    v1 = register_adapter(tracking, tiny_model, tmp / "a1", seed=1)
    v2 = register_adapter(tracking, tiny_model, tmp / "a2", seed=2)
    promote_version(tracking, v1)
    answers = {v: version_answer(tracking, v, QUESTION, TOKENS) for v in (v1, v2)}
    assert answers[v1] != answers[v2], "the two versions must answer differently for this test to see a switch"

    with serving(tracking, tmp / "server.log") as base_url:
        client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        yield {"tracking": tracking, "url": base_url, "client": client, "v1": v1, "v2": v2, "answers": answers,
               "log": tmp / "server.log", "tmp": tmp, "base": tiny_model}


def ask(client, stream=False, messages=QUESTION, max_tokens=TOKENS):
    """(answer, system_fingerprint) for one request."""
    if not stream:
        r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=max_tokens)
        return r.choices[0].message.content, r.system_fingerprint
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=max_tokens, stream=True))
    return "".join(c.choices[0].delta.content or "" for c in chunks), chunks[-1].system_fingerprint


def served_version(server) -> str:
    return server["client"].models.list().data[0].model_extra["version"]


def test_chat_completion_answers_like_the_champion_weights_streaming_and_not(server):
    client, v1 = server["client"], server["v1"]
    reply = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS)
    assert reply.object == "chat.completion" and reply.model == NAME and reply.system_fingerprint == f"{NAME}/v{v1}"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == server["answers"][v1] and len(server["answers"][v1].strip()) >= 5
    assert reply.usage.completion_tokens <= TOKENS and reply.usage.prompt_tokens > 5
    assert reply.choices[0].finish_reason in ("stop", "length")

    chunks = list(client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS, stream=True))
    assert len(chunks) >= 3 and chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == server["answers"][v1]
    assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_models_lists_the_served_name_with_the_registered_version(server):
    models = server["client"].models.list().data
    assert [m.id for m in models] == [NAME]
    assert models[0].model_extra["version"] == server["v1"] and models[0].model_extra["root"] == f"models:/{NAME}/1"


def test_two_concurrent_requests_both_answer(server):
    other = [{"role": "user", "content": "Name a colour."}]
    results, started = {}, threading.Barrier(2)

    def one(key, messages, stream):
        started.wait()
        results[key] = ask(server["client"], stream, messages, max_tokens=24), time.monotonic()

    threads = [threading.Thread(target=one, args=("a", QUESTION, False)),
               threading.Thread(target=one, args=("b", other, True))]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["a"][0][0] == version_answer(server["tracking"], server["v1"], QUESTION, 24)
    assert results["b"][0][0] == version_answer(server["tracking"], server["v1"], other, 24)
    assert max(results["a"][1], results["b"][1]) - begin < 120


@pytest.mark.parametrize(("body", "status", "expect"), [
    (b'{"model": "serve-test", "messages": [', 400, "not valid JSON"),
    (b'["a list"]', 400, "must be a JSON object"),
    (json.dumps({"model": NAME}).encode(), 400, "messages: Field required"),
    (json.dumps({"model": NAME, "messages": []}).encode(), 400, "messages: List should have at least 1 item"),
    (json.dumps({"model": NAME, "messages": [{"role": "user"}]}).encode(), 400, "messages.0.content"),
    (json.dumps({"model": "gpt-4o", "messages": QUESTION}).encode(), 404, "'gpt-4o' does not exist"),
    (json.dumps({"model": NAME, "messages": QUESTION, "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"model": NAME, "messages": QUESTION, "max_tokens": -1}).encode(), 400, "max_tokens"),
    (json.dumps({"model": NAME, "messages": [{"role": "user", "content": "tips " * 3000}]}).encode(), 400,
     "maximum context length is 512 tokens"),
    (json.dumps({"model": NAME, "messages": QUESTION, "max_tokens": 600}).encode(), 400,
     "maximum context length is 512 tokens"),
    (json.dumps({"model": NAME, "messages": QUESTION, "response_format": {"type": "xml"}}).encode(), 400,
     "response_format.type"),
    (json.dumps({"model": NAME, "messages": QUESTION, "response_format": {"type": "json_schema"}}).encode(), 400,
     "needs a json_schema object"),
    (json.dumps({"model": NAME, "messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "(open"}}}}}}
     ).encode(), 400, "unclosed group"),
    (json.dumps({"model": NAME, "messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense"}}}}).encode(), 400, "Invalid type: nonsense"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, body, status, expect):
    r = httpx.post(f"{server['url']}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert expect in error["message"] and error["type"] == "invalid_request_error"
    assert "tips tips" not in r.text  # the request's text is not echoed back
    assert ask(server["client"])[0] == server["answers"][served_version(server)]


def test_the_official_client_raises_the_matching_errors(server):
    client = server["client"]
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client.chat.completions.create(model="nope", messages=QUESTION)
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|maximum context length"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "tips " * 3000}])
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="at least 1 item"):
        client.chat.completions.create(model=NAME, messages=[])


ANSWER_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer", "sure"],
                 "properties": {"answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
                                "sure": {"type": "boolean"}}}


def test_response_format_makes_even_the_tiny_model_answer_json_under_the_schema(server):
    import jsonschema

    client, fmt = server["client"], {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA,
                                                                             "strict": True}}
    free = server["answers"][served_version(server)]
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)  # unconstrained, the tiny model writes no JSON
    for question in (QUESTION, [{"role": "user", "content": "Is 8443 the Zephyr port? Reply in JSON."}]):
        reply = client.chat.completions.create(model=NAME, messages=question, max_tokens=40, response_format=fmt)
        jsonschema.validate(json.loads(reply.choices[0].message.content), ANSWER_SCHEMA)
        assert reply.choices[0].finish_reason == "stop"  # the grammar ended it, not max_tokens
        chunks = client.chat.completions.create(model=NAME, messages=question, max_tokens=40, response_format=fmt,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content
    anything = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=60,
                                              response_format={"type": "json_object"})
    if anything.choices[0].finish_reason == "stop":  # an object may run past 60 tokens; when it ends, it parses
        assert isinstance(json.loads(anything.choices[0].message.content), dict)
    else:
        assert anything.choices[0].message.content.startswith("{")
    assert ask(client)[0] == free  # requests without a format are not affected


def wait_for_version(server, version, seconds=90):
    deadline = time.monotonic() + seconds
    while served_version(server) != version:
        assert time.monotonic() < deadline, f"server still on {served_version(server)}, not {version}"
        time.sleep(0.2)


def test_promotion_and_rollback_reach_the_server_and_no_request_fails(server):
    tracking, client, v1, v2, answers = (server[k] for k in ("tracking", "client", "v1", "v2", "answers"))
    seen, failures, stop = [], [], threading.Event()

    def traffic():
        i = 0
        while not stop.is_set():
            try:
                seen.append(ask(client, stream=bool(i % 2)))
            except Exception as err:  # any failed request fails the test
                failures.append(repr(err))
            i += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        time.sleep(1)
        promote_version(tracking, v2, override=True, reason="serve test: promote the other adapter")
        wait_for_version(server, v2)
        assert ask(client) == (answers[v2], f"{NAME}/v{v2}")
        assert ask(client, stream=True)[0] == answers[v2] != answers[v1]
        time.sleep(1)
        rollback(tracking, reason="serve test: back to v1")
        wait_for_version(server, v1)
        assert ask(client) == (answers[v1], f"{NAME}/v{v1}")
        time.sleep(1)
    finally:
        stop.set()
        worker.join(timeout=120)
    assert failures == []
    # Every answer came whole from one version: the one its fingerprint names.
    assert {fp for _, fp in seen} == {f"{NAME}/v{v1}", f"{NAME}/v{v2}"}
    assert all(text == answers[fp.rsplit("/v", 1)[1]] for text, fp in seen)
    assert len(seen) >= 6


def test_a_version_that_fails_to_load_is_never_switched_to(server):
    tracking, client, v1 = server["tracking"], server["client"], server["v1"]
    before = served_version(server)
    v3 = register_adapter(tracking, server["base"], server["tmp"] / "a3", seed=3, break_weights=True)
    promote_version(tracking, v3, override=True, reason="serve test: a broken version")
    registry = MlflowClient(tracking.tracking_uri)
    deadline = time.monotonic() + 90
    while "serve.load_error" not in registry.get_model_version(NAME, v3).tags:
        assert time.monotonic() < deadline, "no serve.load_error tag on the broken version"
        time.sleep(0.3)
    assert "failed to load" in registry.get_model_version(NAME, v3).tags["serve.load_error"]
    health = httpx.get(f"{server['url']}/health").json()
    assert health["champion"] == v3 and health["serving"] == before and v3 in health["load_errors"]
    assert ask(client) == (server["answers"][before], f"{NAME}/v{before}")
    assert f"not switching {NAME} from version {before} to {v3}" in server["log"].read_text()

    # rollback --to puts the alias back on a chosen version; the server already serves it, nothing moves.
    assert main(["rollback", "--to", v1, "--reason", "serve test", *cli_tracking(tracking)]) == 0
    assert str(registry.get_model_version_by_alias(NAME, "champion").version) == v1
    time.sleep(1.5)
    assert served_version(server) == v1 and ask(client)[0] == server["answers"][v1]

    # Promoted onto it again, the broken version is tried once more (and refused again), not skipped forever.
    promote_version(tracking, v3, override=True, reason="serve test: try the broken version again")
    deadline = time.monotonic() + 60
    while server["log"].read_text().count(f"to {v3}: ") < 2:
        assert time.monotonic() < deadline, "the re-promoted version was not tried again"
        time.sleep(0.3)
    assert served_version(server) == v1 and ask(client)[0] == server["answers"][v1]
    assert main(["rollback", "--to", v1, "--reason", "serve test", *cli_tracking(tracking)]) == 0


def test_the_server_log_holds_no_request_or_answer_text(server):
    ask(server["client"])
    log = server["log"].read_text()
    assert "serving serve-test version" in log  # the log is there, and it names versions
    assert "Give three tips" not in log and "tips tips" not in log and server["answers"][server["v1"]] not in log


def served_trace(server, request: str):
    """The trace behind a request id, once the server's background export has stored it."""
    mlflow.set_tracking_uri(server["tracking"].tracking_uri)
    deadline = time.monotonic() + 30
    while True:
        try:
            trace = mlflow.get_trace(trace_id_of(request))
        except mlflow.exceptions.MlflowException:
            trace = None
        if trace is not None or time.monotonic() > deadline:
            return trace
        time.sleep(0.3)


def test_every_request_is_a_trace_with_version_tokens_latency_and_the_request_id(server):
    raw = server["client"].chat.completions.with_raw_response.create(model=NAME, messages=QUESTION, max_tokens=TOKENS)
    answer = raw.parse()
    assert raw.headers["x-request-id"] == answer.id and trace_id_of(answer.id) is not None
    trace = served_trace(server, answer.id)
    assert trace.info.tags[MODEL_NAME_TAG] == NAME and trace.info.tags[MODEL_VERSION_TAG] == served_version(server)
    assert json.loads(trace.data.request)["messages"] == QUESTION
    assert answer_text(trace.data.response) == answer.choices[0].message.content
    assert trace.info.token_usage == {"input_tokens": answer.usage.prompt_tokens,
                                      "output_tokens": answer.usage.completion_tokens,
                                      "total_tokens": answer.usage.total_tokens}
    assert trace.info.execution_duration > 0 and trace.info.state.value == "OK"
    # A streamed answer is traced whole, under the id every chunk carries.
    chunks = list(server["client"].chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS,
                                                           stream=True))
    streamed = served_trace(server, chunks[0].id)
    assert answer_text(streamed.data.response) == "".join(c.choices[0].delta.content or "" for c in chunks)


def test_traced_messages_keep_placeholders_not_personal_data(server):
    question = [{"role": "user", "content": "Mail jane.doe@contoso.com or call +49 30 901820, card 4111 1111 1111 1111"}]
    answer = server["client"].chat.completions.create(model=NAME, messages=question, max_tokens=4)
    traced = served_trace(server, answer.id).data.request
    assert "<EMAIL>" in traced and "<CREDIT_CARD>" in traced
    assert "jane.doe" not in traced and "4111" not in traced


def test_feedback_lands_on_the_trace_and_bad_feedback_writes_nothing(server):
    url = server["url"]
    answer = server["client"].chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS)
    accepted = send_feedback(url, answer.id, user="ana", rating="down", correction="Sleep, water and walks.")
    assert accepted["accepted"] == ["rating", "correction"]
    wait_for_feedback(url)
    assessments = served_trace(server, answer.id).info.assessments
    assert {(a.name, a.source.source_type, a.source.source_id) for a in assessments} == {
        (RATING, "HUMAN", "ana"), (CORRECTION, "HUMAN", "ana")}

    bad = [({"request_id": "chatcmpl-" + "0" * 32, "user": "ana", "rating": "up"}, 404, "unknown request id"),
           ({"request_id": "not-an-id", "user": "ana", "rating": "up"}, 404, "unknown request id"),
           ({"request_id": answer.id, "user": "ben", "rating": "meh"}, 400, "rating"),
           ({"request_id": answer.id, "user": "ben", "rating": "up", "correction": "  "}, 400, "correction is empty"),
           ({"request_id": answer.id, "user": "ben"}, 400, "give a rating"),
           ({"request_id": answer.id, "user": "ana", "rating": "up"}, 409, "already gave a rating")]
    for body, status, message in bad:
        r = httpx.post(f"{url}/v1/feedback", json=body, timeout=30)
        assert r.status_code == status and message in r.json()["error"]["message"], (body, r.text)
    with pytest.raises(FeedbackRejected, match="409"):
        send_feedback(url, answer.id, user="ana", correction="Another one.")
    wait_for_feedback(url)
    assert len(served_trace(server, answer.id).info.assessments) == 2  # nothing written by the refusals

    # Another user's vote counts on its own; the retrain flow reads both back as feedback records.
    send_feedback(url, answer.id, user="ben", rating="up")
    wait_for_feedback(url)
    window = read_trace_feedback(server["tracking"], lookback_days=1, read_before=None)
    mine = [r for r in window["records"] if r["trace_id"] == trace_id_of(answer.id)]
    assert sorted((r["rating"], r.get("correction")) for r in mine) == [("down", "Sleep, water and walks."),
                                                                         ("up", None)]
    assert {r["model_version"] for r in mine} == {served_version(server)}


def test_without_a_champion_the_server_answers_503_and_lists_no_model(tmp_path):
    """Started before anything was promoted: it says so, and keeps polling (nothing loaded, no model needed)."""
    from fastapi.testclient import TestClient

    from serve.app import build_app
    from serve.champion import ChampionFollower
    from serve.tracing import RequestTracer

    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "a"),
                              experiment="empty", registered_model="nothing-yet")
    client, _ = connect(tracking)
    follower = ChampionFollower(client, "nothing-yet")
    assert follower.check_once() is False and follower.current is None
    with TestClient(build_app(follower, RequestTracer(tracking, ServeConfig()), "nothing-yet")) as http:
        assert http.get("/health").status_code == 503
        assert http.get("/v1/models").json() == {"object": "list", "data": []}
        r = http.post("/v1/chat/completions", json={"model": "nothing-yet", "messages": QUESTION})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_champion"
