"""An OpenAI-compatible engine behind serve-model (`serve.engine: openai`): the engine decodes, the gateway keeps the loop.

    tunegate serve-model --config configs/demo.yaml --set serve.engine=openai \
        --set serve.engine_url=http://127.0.0.1:8001/v1 --set serve.engine_load=lora

serve-model stays what users and the feedback path talk to: it validates every request against the
version's own tokenizer and chat template (context length, response_format), traces it with PII
redacted, accepts feedback on it and follows the champion alias. vLLM, SGLang, TGI or
`transformers serve` decode. A new champion is put on the engine before anything switches to it,
one of three ways (`serve.engine_load`):
- lora: vLLM's runtime LoRA loading (POST /v1/load_lora_adapter; vLLM started with --enable-lora and
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); the version's adapter is put in `serve.engine_dir`, which the
  engine must be able to read, and requests name it `serve.engine_model` (default `<name>-v<version>`);
- path: engines that load a model by its path on request (`transformers serve`): the merged weights
  are put in `serve.engine_dir` and requests name that folder;
- command: `serve.engine_reload` is run with {merged}, {adapter}, {name}, {version} and {model} filled
  in (say, restart vLLM on the merged weights with --served-model-name {model}), for engines that load
  merged weights only at start.
Then a probe, a one-token chat request under that name, must come back 200 and name that model.
Until it does the old version serves; a version whose engine never answers as it is not switched to
(`serve.load_error` on the version, as in-process). A request the engine fails is a 502 naming it.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

from serve.backend import LoadedVersion, LoadError, Sampling, context_length
from serve.batching import Job
from tunegate.config import ServeConfig

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The engine failed a request (unreachable, an error status, or another model answered)."""


def said(err) -> str:
    """What an engine's error response says: OpenAI's error shape, FastAPI's detail, or the body's start."""
    return (err.response.text or str(err.message))[:300]


def engine_client(cfg: ServeConfig, timeout: float):
    import os

    from openai import OpenAI

    key = os.environ.get(cfg.engine_api_key_env, "") if cfg.engine_api_key_env else ""
    return OpenAI(base_url=cfg.engine_url, api_key=key or "unused", max_retries=0, timeout=timeout)


def download(uri: str, folder: Path, weights: bool = True) -> Path:
    """An artifact folder to `folder` (once); without weights, only what the tokenizer and config need."""
    import mlflow

    if not folder.exists():
        part = folder.with_name(folder.name + ".part")
        part.mkdir(parents=True, exist_ok=True)
        for item in mlflow.artifacts.list_artifacts(artifact_uri=uri):
            if weights or not item.path.endswith((".safetensors", ".bin")):
                mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{Path(item.path).name}", dst_path=str(part))
        part.replace(folder)  # whole, or not there: a half download is never taken for a version
    return folder


def version_files(client, cfg: ServeConfig, name: str, version: str) -> dict[str, str]:
    """The version's files where the engine reads them: {merged, adapter} (what this mode needs)."""
    mv = client.get_model_version(name, version)
    root = Path(cfg.engine_dir).resolve() / f"{name}-v{version}"
    if cfg.engine_load == "lora":
        if mv.tags.get("weights") != "adapter":
            raise LoadError(f"{name} version {version} is a whole model, not an adapter: serve.engine_load=lora "
                            "loads adapters only; use path or command for merged weights")
        adapter = download(f"runs:/{mv.run_id}/adapter", root / "adapter")
        return {"adapter": str(adapter), "merged": str(download(mv.tags["merged"], root / "tokenizer", False))}
    return {"merged": str(download(mv.tags["merged"], root / "merged")), "adapter": ""}


def put_on_engine(cfg: ServeConfig, files: dict[str, str], model: str, name: str, version: str) -> None:
    """Load the version on the engine the configured way (path: the probe itself loads it)."""
    import httpx

    if cfg.engine_load == "lora":
        response = httpx.post(f"{cfg.engine_url.rstrip('/')}/load_lora_adapter", timeout=cfg.engine_timeout_s,
                              json={"lora_name": model, "lora_path": files["adapter"]})
        if response.status_code >= 400 and "already" not in response.text:  # loaded before: fine
            raise LoadError(f"the engine refused to load the adapter of {name} version {version}: "
                            f"{response.status_code} {response.text[:300]}")
    elif cfg.engine_load == "command":
        argv = [a.format(model=model, name=name, version=version, **files) for a in cfg.engine_reload]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=cfg.engine_timeout_s)
        if done.returncode:
            raise LoadError(f"serve.engine_reload exited with {done.returncode} for {name} version {version}: "
                            f"{(done.stderr or done.stdout)[-300:]}")


def probe(cfg: ServeConfig, model: str) -> None:
    """One-token request under `model` until the engine answers as it (LoadError after engine_timeout_s)."""
    import openai

    client, deadline, last = engine_client(cfg, cfg.engine_timeout_s), time.monotonic() + cfg.engine_timeout_s, ""
    while time.monotonic() < deadline:
        try:
            reply = client.chat.completions.create(model=model, max_tokens=1, temperature=0,
                                                   messages=[{"role": "user", "content": "ping"}])
            if reply.model == model:
                return
            raise LoadError(f"the engine at {cfg.engine_url} answered as {reply.model!r}, not {model!r}: it serves "
                            "another model")
        except openai.APIConnectionError as err:  # not up (yet): a restarting engine comes back
            last = f"unreachable ({type(err).__name__})"
        except openai.APIStatusError as err:
            raise LoadError(f"the engine at {cfg.engine_url} answered {err.status_code} to a request for "
                            f"{model!r}: {said(err)}") from None
        time.sleep(1)
    raise LoadError(f"the engine at {cfg.engine_url} did not answer as {model!r} within {cfg.engine_timeout_s:.0f} s: "
                    f"{last}")


def engine_loader(cfg: ServeConfig):
    """The ChampionFollower's loader in engine mode: files, load, probe; the version's tokenizer for validation."""
    def load(client, name: str, version: str) -> LoadedVersion:
        from transformers import AutoConfig, AutoTokenizer

        start = time.perf_counter()
        try:
            files = version_files(client, cfg, name, str(version))
            model = files["merged"] if cfg.engine_load == "path" else cfg.engine_model.format(name=name,
                                                                                               version=version)
            tokenizer = AutoTokenizer.from_pretrained(files["merged"])
            limit = AutoConfig.from_pretrained(files["merged"]).max_position_embeddings
        except LoadError:
            raise
        except Exception as err:
            raise LoadError(f"{name} version {version}: its files for the engine failed: {type(err).__name__}: "
                            f"{err}") from err
        put_on_engine(cfg, files, model, name, str(version))
        probe(cfg, model)
        return LoadedVersion(name, str(version), None, tokenizer, context_length(limit, tokenizer),
                             time.perf_counter() - start, f"{cfg.engine_url} as {model}", "engine", model)

    return load


class EngineDecoder:
    """Sends each request to the engine and streams its answer into a Job, as the Batcher does in-process."""

    def __init__(self, cfg: ServeConfig, timeout: float = 600):
        self.cfg, self.client = cfg, engine_client(cfg, timeout)
        self.max_batch, self.waves = 0, []  # /health's batching fields: the engine batches

    def submit(self, loaded: LoadedVersion, inputs: dict, sampling: Sampling, messages: list[dict]) -> Job:
        job = Job(loaded, inputs, sampling)
        threading.Thread(target=self._run, args=(job, messages), daemon=True).start()
        return job

    def stop(self) -> None:
        pass

    def _run(self, job: Job, messages: list[dict]) -> None:
        import openai

        s, model = job.sampling, job.loaded.engine_model
        extra = {"response_format": s.response_format} if s.response_format else {}
        try:
            stream = self.client.chat.completions.create(
                model=model, messages=messages, max_tokens=s.max_tokens, temperature=s.temperature or 0,
                stream=True, **({"top_p": s.top_p} if s.top_p else {}), **({"stop": list(s.stop)} if s.stop else {}),
                **extra)
            parts, finish, usage = [], "stop", None
            for chunk in stream:
                if chunk.model and chunk.model != model:
                    raise EngineError(f"the engine answered as {chunk.model!r}, not {model!r}")
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        job.events.put(choice.delta.content)
                    finish = choice.finish_reason or finish
            tokens = usage.completion_tokens if usage else len(job.loaded.tokenizer("".join(parts))["input_ids"])
            job.events.put((tokens, finish))
        except openai.APIConnectionError as err:
            job.events.put(EngineError(f"the engine at {self.cfg.engine_url} is unreachable: {type(err).__name__}"))
        except openai.APIStatusError as err:
            job.events.put(EngineError(f"the engine at {self.cfg.engine_url} answered {err.status_code}: {said(err)}"))
        except Exception as err:  # the reader gets it; the gateway answers 502
            job.events.put(err if isinstance(err, EngineError) else EngineError(f"{type(err).__name__}: {err}"))
