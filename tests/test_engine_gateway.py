"""serve-model as a gateway in front of an engine (serve.engine: openai), here `transformers serve` on the CPU.

The gateway keeps traces, feedback and alias-following; the engine decodes. A promotion switches only
after the engine answered as the new version, with no failed request; an engine that is down, or that
serves another model, never changes what is served.
"""

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from cli.serving import free_port, serve_model_process, stop_process, wait_healthy
from serve.client import send_feedback, wait_for_feedback
from tasks.promote import promote_version, rollback
from test_serve import NAME, QUESTION, TOKENS, cli_tracking, register_adapter, version_answer
from tunegate.config import TrackingConfig
from tunegate.traces import MODEL_VERSION_TAG, RATING


@contextmanager
def transformers_serve(log: Path, *args: str):
    """`transformers serve` on a free loopback port (CPU, 1 thread); yields its /v1 URL and the process."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "transformers"), "serve", *args, "--host",
                                 "127.0.0.1", "--port", str(port), "--device", "cpu"], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 300, proc, log)
        yield f"http://127.0.0.1:{port}/v1", proc
    finally:
        stop_process(proc)


@contextmanager
def gateway_without_champion(args: list[str], log: Path):
    """A gateway that cannot load its champion: it runs, answers 503, and says why in /health."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve-model", *args, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, f"the gateway reported no load error: {log.read_text()[-2000:]}"
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                state = health(url)
            except httpx.HTTPError:
                state = {"load_errors": {}}
            if state["load_errors"]:
                break
            time.sleep(0.5)
        yield url, state
    finally:
        stop_process(proc)


def gateway_args(tracking, engine_url: str, engine_dir: Path, *extra: str) -> list[str]:
    return [*cli_tracking(tracking), "--set", "serve.engine=openai", "--set", f"serve.engine_url={engine_url}",
            "--set", "serve.engine_load=path", "--set", f"serve.engine_dir={engine_dir}", "--poll-seconds", "0.5",
            *extra]


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=30).json()


@pytest.fixture(scope="module")
def versions(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp}/mlflow.db", artifact_root=str(tmp / "artifacts"),
                              experiment="gateway", registered_model=NAME)
    v1, v2 = (register_adapter(tracking, tiny_model, tmp / f"a{i}", seed=i) for i in (1, 2))
    promote_version(tracking, v1)
    answers = {v: version_answer(tracking, v, QUESTION, TOKENS) for v in (v1, v2)}
    assert answers[v1] != answers[v2]
    return {"tracking": tracking, "tmp": tmp, "v1": v1, "v2": v2, "answers": answers}


@pytest.mark.slow
def test_the_gateway_traces_takes_feedback_and_switches_after_the_engines_probe(versions):
    import mlflow

    tracking, tmp, v1, v2, answers = (versions[k] for k in ("tracking", "tmp", "v1", "v2", "answers"))
    with transformers_serve(tmp / "engine.log") as (engine, engine_proc), serve_model_process(
            gateway_args(tracking, engine, tmp / "engine-files", "--set", "serve.engine_timeout_s=20"),
            tmp / "gateway.log", 300) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)
        assert health(url)["serving"] == v1 and health(url)["dtype"] == "engine"
        reply = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS)
        assert reply.choices[0].message.content == answers[v1]  # the engine's greedy answer: v1's weights
        assert reply.system_fingerprint == f"{NAME}/v{v1}" and reply.id.startswith("chatcmpl-")
        streamed = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == answers[v1]
        # Input validation stays the gateway's: the engine never sees these.
        bad = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": [], "max_tokens": -1})
        assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]

        assert send_feedback(url, reply.id, user="ana", rating="up")["accepted"] == ["rating"]
        wait_for_feedback(url)
        trace = mlflow.get_trace("tr-" + reply.id.removeprefix("chatcmpl-"), flush=True)
        assert trace.info.tags[MODEL_VERSION_TAG] == v1
        assert [(a.name, a.source.source_id) for a in trace.info.assessments] == [(RATING, "ana")]

        # Promotion: traffic keeps flowing; the switch waits for the engine to answer as v2.
        seen, failures, stop = [], [], threading.Event()

        def traffic():
            while not stop.is_set():
                try:
                    r = client.chat.completions.create(model=NAME, messages=QUESTION, max_tokens=TOKENS)
                    seen.append((r.system_fingerprint, r.choices[0].message.content))
                except Exception as err:
                    failures.append(repr(err))

        worker = threading.Thread(target=traffic)
        worker.start()
        promote_version(tracking, v2, override=True, reason="test: gateway switch")
        deadline = time.monotonic() + 240
        while not any(f == f"{NAME}/v{v2}" for f, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
        stop.set()
        worker.join(timeout=120)
        assert failures == [] and len(seen) >= 2
        assert set(seen) <= {(f"{NAME}/v{v1}", answers[v1]), (f"{NAME}/v{v2}", answers[v2])}
        first_new = next(i for i, (f, _) in enumerate(seen) if f == f"{NAME}/v{v2}")
        assert all(f == f"{NAME}/v{v2}" for f, _ in seen[first_new:])  # never back to v1 once switched

        # The engine goes down, then the alias moves back: v1 cannot be put on it, so v2 stays what is served,
        # and requests get a 502 that names the engine instead of a hang or a 500.
        stop_process(engine_proc)
        rollback(tracking)
        deadline = time.monotonic() + 120
        while v1 not in health(url)["load_errors"] and time.monotonic() < deadline:
            time.sleep(0.5)
        state = health(url)
        assert state["serving"] == v2 and state["champion"] == v1 and "unreachable" in state["load_errors"][v1]
        down = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": QUESTION}, timeout=60)
        assert down.status_code == 502 and "unreachable" in down.json()["error"]["message"]


@pytest.mark.slow
def test_an_engine_that_serves_another_model_is_never_switched_to(versions):
    import mlflow

    tracking, tmp, v1 = (versions[k] for k in ("tracking", "tmp", "v1"))
    merged = mlflow.MlflowClient(tracking.tracking_uri).get_model_version(NAME, v1).tags["merged"]
    other = mlflow.artifacts.download_artifacts(artifact_uri=merged, dst_path=str(tmp / "pinned"))
    # `transformers serve MODEL` is pinned to one model and refuses requests for any other.
    with transformers_serve(tmp / "pinned.log", other) as (engine, _):
        with gateway_without_champion(gateway_args(tracking, engine, tmp / "other-files"),
                                      tmp / "gateway-other.log") as (url, state):
            error = next(iter(state["load_errors"].values()))
            assert state["serving"] is None and "answered 400" in error and "pinned" in error
            r = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": QUESTION}, timeout=30)
            assert r.status_code == 503 and r.json()["error"]["code"] == "no_champion"
