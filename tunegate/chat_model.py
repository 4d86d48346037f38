"""A fine-tuned model as an MLflow Model with a chat task, plus its merged safetensors weights.

    # inside mlflow.start_run():
    logged = log_chat_model("outputs/RUN/sft/adapter", "adapter", base_dir)
    client.create_model_version(name, source=logged["model_uri"], run_id=..., model_id=logged["model_id"])

The MLflow Model is logged with the transformers flavor and task "llm/v1/chat", so
`mlflow.pyfunc.load_model("models:/NAME@champion").predict({"messages": [...]})` takes an OpenAI
chat request and returns a chat.completion dict (greedy unless params say otherwise), and
`mlflow models serve` answers the same.
A peft adapter is logged with `base_model_path=` (MLflow 3.17): the flavor stores the adapter and a
reference to the local base directory, which has to exist where the model is loaded. A full
fine-tune is logged whole.

The same run also gets `merged/`: the adapter folded into the base (or the full model), as a plain
safetensors transformers checkpoint with its tokenizer. It needs neither peft nor the base
directory, so the OpenAI-compatible server (serve/) and other machines load that; nothing that
serves reads outputs/.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

CHAT_TASK = "llm/v1/chat"
MERGED_PATH = "merged"
# transformers 5's text-generation pipeline samples unless told otherwise (do_sample=True, temperature
# 0.7), so the same request would get a different answer each time. Greedy by default; a caller passes
# params={"do_sample": True, "temperature": ...} to sample.
GENERATION_DEFAULTS = {"do_sample": False}


def pinned_requirements(kind: str) -> list[str]:
    """The packages loading the model needs, at the installed versions.

    Given explicitly: MLflow's default list for a torch model adds torchvision, and fails when it is
    not installed (it is not needed for text).
    """
    from importlib.metadata import version

    names = ["mlflow", "torch", "transformers", "accelerate", "safetensors"] + (["peft"] if kind == "adapter" else [])
    return [f"{name}=={version(name)}" for name in names]


def log_chat_model(weights_dir: str, kind: str, base_model: str | None, artifact_path: str = "chat",
                   trust_remote_code: bool = False) -> dict:
    """Log weights as a chat MLflow Model and `merged/` as an artifact of the active run; return their URIs.

    kind is "adapter" (a peft folder on base_model) or "model" (a full checkpoint, logged whole;
    base_model unused). A local base directory is referenced with `base_model_path`; a hub id is
    referenced by name, as MLflow does for peft models. Call inside `mlflow.start_run()`.
    """
    import mlflow
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind not in ("adapter", "model"):
        raise ValueError(f"kind must be 'adapter' or 'model', got {kind!r}")
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_chat_model logs into the active MLflow run: call it inside mlflow.start_run()")
    tokenizer = AutoTokenizer.from_pretrained(weights_dir, trust_remote_code=trust_remote_code)
    if kind == "adapter":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(base, weights_dir)
        local_base = str(Path(base_model).resolve()) if Path(base_model).is_dir() else None
        info = mlflow.transformers.log_model({"model": model, "tokenizer": tokenizer}, name=artifact_path,
                                             task=CHAT_TASK, base_model_path=local_base,
                                             model_config=GENERATION_DEFAULTS,
                                             pip_requirements=pinned_requirements(kind))
        merged = model.merge_and_unload()
    else:
        # Not the checkpoint path: MLflow 3.17's local-checkpoint branch fails on transformers 5's
        # pipeline registry (`'str' object has no attribute '__name__'`), so the loaded model is logged.
        merged = AutoModelForCausalLM.from_pretrained(weights_dir, dtype=torch.float32,
                                                      trust_remote_code=trust_remote_code)
        info = mlflow.transformers.log_model({"model": merged, "tokenizer": tokenizer}, name=artifact_path,
                                             task=CHAT_TASK, model_config=GENERATION_DEFAULTS,
                                             pip_requirements=pinned_requirements(kind))
    with tempfile.TemporaryDirectory(prefix="tunegate-merged-") as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        mlflow.log_artifacts(tmp, artifact_path=MERGED_PATH)
    return {"model_uri": info.model_uri, "model_id": info.model_id,
            "merged_uri": f"runs:/{run.info.run_id}/{MERGED_PATH}"}


def save_chat_model(model, tokenizer, path: str, extra_requirements: tuple[str, ...] = ()) -> None:
    """A model as loaded in memory, saved to a local folder as a chat MLflow Model (log it with log_artifacts).

    For a quantized model: transformers 5.24 saves one it quantized while loading, but refuses one it loaded
    from a torchao checkpoint (revert_weight_conversion raises NotImplementedError), so the stage that
    quantizes writes this folder while the model is in memory.
    """
    import mlflow

    mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, path=path, task=CHAT_TASK,
                                   model_config=GENERATION_DEFAULTS,
                                   pip_requirements=pinned_requirements("model") + list(extra_requirements))
