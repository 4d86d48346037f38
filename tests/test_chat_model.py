"""A LoRA adapter logged as a chat MLflow Model: models:/NAME@champion answers an OpenAI request offline."""

import json
import sys

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_adapters import greedy_answer, make_lora_adapter
from tunegate.chat_model import log_chat_model
from tunegate.registry import connect, ensure_registered_model, get_alias

QUESTION = [{"role": "user", "content": "Give three tips for staying healthy."}]


@pytest.fixture()
def registered(tiny_model, tracking, tmp_path):
    adapter = make_lora_adapter(tiny_model, tmp_path / "adapter", seed=1)
    client, experiment_id = connect(tracking)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged = log_chat_model(str(adapter), "adapter", tiny_model)
    ensure_registered_model(client, tracking.registered_model)
    version = client.create_model_version(tracking.registered_model, source=logged["model_uri"],
                                          run_id=run.info.run_id, model_id=logged["model_id"])
    client.set_registered_model_alias(tracking.registered_model, "champion", version.version)
    return {"client": client, "logged": logged, "adapter": adapter, "version": version}


def test_champion_loads_as_pyfunc_and_answers_a_chat_request_like_the_merged_weights(registered, tracking,
                                                                                     tiny_model, tmp_path):
    client, logged = registered["client"], registered["logged"]
    # The version's source is an MLflow Model: MLmodel with the transformers flavor, a chat task, and
    # the adapter referencing the local base instead of copying it.
    source = get_alias(client, tracking.registered_model, "champion").source
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp_path / "mlmodel"))
    mlmodel = (tmp_path / "mlmodel" / "MLmodel").read_text()
    assert model_dir and "inference_task: llm/v1/chat" in mlmodel and "python_function" in mlmodel
    assert f"local_base_model_path: {tiny_model}" in mlmodel
    files = {p.name for p in (tmp_path / "mlmodel").rglob("*") if p.is_file()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files  # base referenced, not copied

    # merged/ of the same run: safetensors only, loads without peft, and is base + adapter.
    merged = mlflow.artifacts.download_artifacts(artifact_uri=logged["merged_uri"], dst_path=str(tmp_path / "m"))
    merged_files = sorted(p.name for p in (tmp_path / "m" / "merged").iterdir())
    assert "model.safetensors" in merged_files and not [f for f in merged_files if f.endswith((".bin", ".pt"))]
    from peft import PeftModel

    tok = AutoTokenizer.from_pretrained(merged)
    ids = tok("Give three tips for staying healthy.", return_tensors="pt")
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(merged)(**ids).logits
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                         str(registered["adapter"]))(**ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(**ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, plain, atol=1e-2)

    # pyfunc: an OpenAI-style request in, a chat.completion out, the same words as greedy merged weights.
    model = mlflow.pyfunc.load_model(f"models:/{tracking.registered_model}@champion")
    reply = model.predict({"messages": QUESTION, "max_tokens": 12})
    reply = reply[0] if isinstance(reply, list) else reply
    assert reply["object"] == "chat.completion"
    message = reply["choices"][0]["message"]
    assert message["role"] == "assistant" and reply["usage"]["completion_tokens"] == 12
    # (MLflow strips the leading whitespace of an answer)
    assert message["content"] == greedy_answer(merged, QUESTION, 12).lstrip() and len(message["content"]) >= 5
    assert json.dumps(reply)  # JSON-safe, as `mlflow models serve` returns it


def test_importing_chat_model_loads_no_torch_transformers_or_prefect():
    import subprocess

    from conftest import ROOT

    code = ("import json, sys; import tunegate.chat_model; "
            "print(json.dumps([m for m in ('torch', 'transformers', 'prefect', 'peft') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_full_fine_tune_is_logged_whole_and_answers_the_same_as_its_weights(tiny_model, tracking, tmp_path):
    _, experiment_id = connect(tracking)
    with mlflow.start_run(experiment_id=experiment_id):
        logged = log_chat_model(tiny_model, "model", None)
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=logged["model_uri"], dst_path=str(tmp_path / "mm"))
    files = {p.relative_to(model_dir).as_posix() for p in (tmp_path / "mm").rglob("*") if p.is_file()}
    assert "model/model.safetensors" in files and "local_base_model_path" not in (tmp_path / "mm" / "MLmodel").read_text()
    reply = mlflow.pyfunc.load_model(logged["model_uri"]).predict({"messages": QUESTION, "max_tokens": 10})[0]
    content = reply["choices"][0]["message"]["content"]
    assert content == greedy_answer(tiny_model, QUESTION, 10).lstrip() and len(content) >= 5


def test_mlflow_models_serve_answers_the_champion_on_localhost(registered, tracking, tmp_path):
    """`mlflow models serve -m models:/NAME@champion --env-manager local`: MLflow's own scoring server."""
    import os
    import socket
    import subprocess
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = os.path.dirname(sys.executable)  # it execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    log = open(tmp_path / "mlflow-serve.log", "w")
    proc = subprocess.Popen([os.path.join(bin_dir, "mlflow"), "models", "serve", "-m",
                             f"models:/{tracking.registered_model}@champion", "--env-manager", "local",
                             "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-serve.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"messages": QUESTION, "max_tokens": 12},
                       timeout=60)
        assert r.status_code == 200, r.text
        reply = r.json()[0]
        content = reply["choices"][0]["message"]["content"]
        assert reply["object"] == "chat.completion" and len(content) >= 5
        merged = mlflow.artifacts.download_artifacts(artifact_uri=registered["logged"]["merged_uri"],
                                                     dst_path=str(tmp_path / "m"))
        assert content == greedy_answer(merged, QUESTION, 12).lstrip()
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()
