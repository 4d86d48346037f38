"""One registered version loaded for serving: its merged weights, tokenizer and context length.

    loaded = load_version(MlflowClient(uri), "tunegate-model", "3")
    text, completion_tokens, finish = complete(loaded, prompt_ids(loaded, messages), Sampling(max_tokens=32))

The weights come from the version's `merged` tag (the run's `merged/` artifact, written by
tunegate/chat_model.py): one safetensors transformers checkpoint, no peft, no base directory,
nothing from outputs/. A version loads fully (download, weights, tokenizer, one forward pass)
before anything may switch to it, so a broken one raises here and never serves.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
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


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request: greedy unless a temperature above 0 asks for sampling."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    matcher: Any = None  # response_format: this reply's llguidance matcher (serve/structured.py)


def load_version(client, name: str, version: str) -> LoadedVersion:
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
        loaded = load_checkpoint(local, name, str(version), trust_remote_code)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # loaded into memory; nothing is read from disk again
    return LoadedVersion(name, str(version), loaded.model, loaded.tokenizer, loaded.context_length,
                         time.perf_counter() - start, f"models:/{name}/{version}")


def load_checkpoint(folder, name: str, version: str, trust_remote_code: bool = False) -> LoadedVersion:
    """A local transformers checkpoint (safetensors only) ready to serve; LoadError when it cannot."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, use_safetensors=True,
                                                           trust_remote_code=trust_remote_code, output_loading_info=True)
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
    return LoadedVersion(name, version, model, tokenizer, context_length(model, tokenizer),
                         time.perf_counter() - start, str(folder))


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


def context_length(model, tokenizer) -> int:
    """Tokens the model attends to: the config's position limit, or the tokenizer's when it is smaller."""
    limit = model.config.max_position_embeddings
    declared = tokenizer.model_max_length  # a huge placeholder when the tokenizer does not know
    return min(limit, declared) if declared and declared < 10**8 else limit


def prompt_ids(loaded: LoadedVersion, messages: list[dict]):
    """The chat template applied to messages, as input_ids and attention_mask tensors."""
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)


def generate_kwargs(loaded: LoadedVersion, sampling: Sampling) -> dict:
    tok = loaded.tokenizer
    kwargs = {"max_new_tokens": sampling.max_tokens,
              "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    if sampling.temperature:
        kwargs |= {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p or 1.0}
    else:
        kwargs |= {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if sampling.stop:
        kwargs |= {"stop_strings": list(sampling.stop), "tokenizer": tok}
    if sampling.matcher is not None:
        from transformers import LogitsProcessorList

        from serve.structured import schema_constraint

        kwargs |= {"logits_processor": LogitsProcessorList([schema_constraint(sampling.matcher)]),
                   "eos_token_id": eos_ids(loaded)}  # the grammar may end on any of them: stop on each
    return kwargs


def eos_ids(loaded: LoadedVersion) -> list[int]:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's."""
    configured = loaded.model.generation_config.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in [loaded.tokenizer.eos_token_id, *ids] if i is not None})


def finish_reason(loaded: LoadedVersion, new_ids: list[int], max_tokens: int) -> str:
    return "length" if len(new_ids) >= max_tokens and new_ids[-1] != loaded.tokenizer.eos_token_id else "stop"


def trim_stop(text: str, stop: tuple[str, ...]) -> str:
    """Cut the answer at the first stop string, which OpenAI leaves out of the answer."""
    cuts = [text.index(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


def complete(loaded: LoadedVersion, inputs, sampling: Sampling) -> tuple[str, int, str]:
    """Generate an answer; return (text, completion tokens, finish_reason)."""
    import torch

    with torch.no_grad():
        out = loaded.model.generate(**inputs, **generate_kwargs(loaded, sampling))
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    text = loaded.tokenizer.decode(new, skip_special_tokens=True)
    return trim_stop(text, sampling.stop), len(new), finish_reason(loaded, new, sampling.max_tokens)


def stream(loaded: LoadedVersion, inputs, sampling: Sampling) -> Iterator[str | tuple[int, str]]:
    """Yield pieces of the answer as they are generated, then (completion tokens, finish_reason)."""
    import torch
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    result: dict = {}

    def run() -> None:
        try:
            with torch.no_grad():
                result["out"] = loaded.model.generate(**inputs, **generate_kwargs(loaded, sampling),
                                                      streamer=streamer)
        except Exception as err:  # surfaced to the client after the stream ends
            result["error"] = err
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    sent = ""
    for piece in streamer:
        candidate = sent + piece
        text = trim_stop(candidate, sampling.stop)
        if len(text) > len(sent):
            yield text[len(sent):]
        if len(text) < len(candidate):  # a stop string appeared: the rest is not sent
            break
        sent = text
    worker.join()
    if "error" in result:
        raise result["error"]
    new = result["out"][0, inputs["input_ids"].shape[1]:].tolist()
    yield len(new), finish_reason(loaded, new, sampling.max_tokens)
