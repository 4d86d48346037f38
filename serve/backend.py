"""One registered version loaded for serving: its merged weights, tokenizer and context length.

    loaded = load_version(MlflowClient(uri), "tunegate-model", "3", dtype="fp32")
    job = Batcher().submit(loaded, prompt_ids(loaded, messages), Sampling(max_tokens=32))   # serve/batching.py

The weights come from the version's `merged` tag (the run's `merged/` artifact, written by
tunegate/chat_model.py): one safetensors transformers checkpoint, no peft, no base directory,
nothing from outputs/. A version loads fully (download, weights, tokenizer, one forward pass)
before anything may switch to it, so a broken one raises here and never serves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any


class LoadError(RuntimeError):
    """A version that cannot be served; the message says why."""


@dataclass(frozen=True)
class LoadedVersion:
    name: str
    version: str
    model: Any
    tokenizer: Any
    context_length: int
    load_seconds: float
    source: str = ""  # where the weights came from: models:/NAME/VERSION or a local folder
    dtype: str = "fp32"  # what it decodes in (serve.precision); "engine" when an engine decodes it
    engine_model: str | None = None  # serve.engine: openai: the name requests use on the engine


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request: greedy unless a temperature above 0 asks for sampling."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    matcher: Any = None  # response_format: this reply's llguidance matcher (serve/structured.py)
    response_format: dict | None = None  # the request's, as sent: an engine decodes under it itself


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def load_version(client, name: str, version: str, dtype: str = "fp32") -> LoadedVersion:
    """Download and load version's merged weights; raise LoadError when it cannot serve."""
    import mlflow

    start = time.perf_counter()
    mv = client.get_model_version(name, version)
    merged_uri = mv.tags.get("merged")
    if not merged_uri:
        raise LoadError(f"{name} version {version} has no `merged` tag: it was registered before serving "
                        "existed; register it again")
    trust_remote_code = json.loads(mv.tags.get("config", "{}")).get("trust_remote_code", False)
    folder = tempfile.mkdtemp(prefix=f"tunegate-serve-v{version}-")
    try:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=merged_uri, dst_path=folder)
        except Exception as err:
            raise LoadError(f"{name} version {version} failed to download: {type(err).__name__}: {err}") from err
        loaded = load_checkpoint(local, name, str(version), trust_remote_code, dtype)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # loaded into memory; nothing is read from disk again
    return LoadedVersion(name, str(version), loaded.model, loaded.tokenizer, loaded.context_length,
                         time.perf_counter() - start, f"models:/{name}/{version}", dtype)


def load_checkpoint(folder, name: str, version: str, trust_remote_code: bool = False,
                    dtype: str = "fp32") -> LoadedVersion:
    """A local transformers checkpoint (safetensors only) in `dtype`, ready to serve; LoadError when it cannot."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, DTYPES[dtype]),
                                                           use_safetensors=True, trust_remote_code=trust_remote_code,
                                                           output_loading_info=True)
        model.eval()
        refuse_missing_weights(info, name, version)
        if tokenizer.chat_template is None:
            raise LoadError(f"{name} version {version}: the tokenizer has no chat template")
        with torch.no_grad():  # a model that loads but cannot run must not be switched to
            model(input_ids=torch.tensor([[tokenizer.eos_token_id]]))
    except LoadError:
        raise
    except Exception as err:  # any failure to load means: keep serving the old version
        raise LoadError(f"{name} version {version} failed to load: {type(err).__name__}: {err}") from err
    return LoadedVersion(name, version, model, tokenizer,
                         context_length(model.config.max_position_embeddings, tokenizer),
                         time.perf_counter() - start, str(folder), dtype)


def refuse_missing_weights(info: dict, name: str, version: str) -> None:
    """LoadError when the checkpoint lacks weights: transformers would fill them with random values and load.

    E.g. a quantized checkpoint whose config.json lost its quantization_config: its int8 tensors are then
    "unexpected" and every linear layer "missing".
    """
    missing = sorted(info["missing_keys"])
    if missing:
        raise LoadError(f"{name} version {version}: the checkpoint lacks {len(missing)} weight(s) the model needs "
                        f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); transformers would "
                        "initialize them at random")


def context_length(limit: int, tokenizer) -> int:
    """Tokens the model attends to: the config's position limit, or the tokenizer's when it is smaller."""
    declared = tokenizer.model_max_length  # a huge placeholder when the tokenizer does not know
    return min(limit, declared) if declared and declared < 10**8 else limit


def prompt_ids(loaded: LoadedVersion, messages: list[dict]):
    """The chat template applied to messages, as input_ids and attention_mask tensors."""
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)


def generation_eos_ids(loaded: LoadedVersion) -> list[int]:
    """The tokens `generate` stops on by itself: the generation config's EOS, else the tokenizer's."""
    configured = loaded.model.generation_config.eos_token_id
    ids = [i for i in (configured if isinstance(configured, list) else [configured]) if i is not None]
    return ids or [loaded.tokenizer.eos_token_id]


def eos_ids(loaded: LoadedVersion) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's."""
    return sorted({i for i in [loaded.tokenizer.eos_token_id, *generation_eos_ids(loaded)] if i is not None})


def trim_stop(text: str, stop: tuple[str, ...]) -> str:
    """Cut the answer at the first stop string, which OpenAI leaves out of the answer."""
    cuts = [text.index(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text
