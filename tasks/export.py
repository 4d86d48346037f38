"""Stage 10, export: a merged safetensors model, the adapter alone, and how to serve them.

    python -m tasks.export BASE_DIR ADAPTER_DIR OUT_DIR

Writes OUT_DIR/merged (plain transformers loads it: no peft needed), OUT_DIR/adapter,
OUT_DIR/serve.sh (the `vllm serve` command), OUT_DIR/Modelfile (Ollama) and smoke_request.json (an
OpenAI chat request to send them): handoffs for other machines. Runs after promotion. Serving here
is `tunegate serve-model` (serve/), on the registry's merged weights, not on this folder.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from tasks.promote import Promotion
from tasks.register import Registered

CHATML_OLLAMA_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)


def merge_adapter(base_model_path: str, adapter_dir: str, out_dir: Path) -> Path:
    """Fold the LoRA/DoRA weights into the base and save a standalone fp32 safetensors model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    return out_dir


def serving_files(model_dir: Path, out_dir: Path, served_name: str, eos_token: str, max_len: int) -> dict:
    serve = out_dir / "serve.sh"
    serve.write_text(
        "#!/usr/bin/env bash\n# OpenAI-compatible server on :8000 (needs a GPU and `pip install vllm`).\n"
        f"vllm serve {shlex.quote(str(model_dir.resolve()))} --served-model-name {shlex.quote(served_name)} "
        f"--dtype auto --max-model-len {max_len}\n"
        "# Not run where it was written: vLLM is not installed on these CPU machines. There, "
        "`tunegate serve-model` serves the champion.\n"
    )
    serve.chmod(0o755)
    lines = [f"FROM {model_dir.resolve()}"]
    if eos_token == "<|im_end|>":  # ChatML models; others keep the template Ollama detects
        lines.append(f'TEMPLATE """{CHATML_OLLAMA_TEMPLATE}"""')
    lines += [f'PARAMETER stop "{eos_token}"', "PARAMETER temperature 0.7"]
    (out_dir / "Modelfile").write_text("\n".join(lines) + "\n")
    request = {"model": served_name, "messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 48,
               "temperature": 0}
    (out_dir / "smoke_request.json").write_text(json.dumps(request, indent=2))
    return {"serve_command": serve.read_text().splitlines()[2], "modelfile": str(out_dir / "Modelfile"),
            "smoke_request": str(out_dir / "smoke_request.json")}


def export_model(base_model_path: str, trained: dict, out_dir: Path, served_name: str, max_len: int) -> dict:
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    merged_dir = out_dir / "merged"
    if trained["adapter"]:
        merge_adapter(base_model_path, trained["adapter"], merged_dir)
        shutil.copytree(trained["adapter"], out_dir / "adapter", dirs_exist_ok=True)
    else:
        shutil.copytree(trained["model"], merged_dir, dirs_exist_ok=True)
    eos = AutoTokenizer.from_pretrained(merged_dir).eos_token
    return {"merged": str(merged_dir), "adapter": str(out_dir / "adapter") if trained["adapter"] else None,
            **serving_files(merged_dir, out_dir, served_name, eos, max_len)}


class Exported(BaseModel):
    """The promoted version's handoff files; `skipped` says why there are none."""

    model_config = ConfigDict(extra="forbid")
    skipped: str | None = None
    merged: str | None = None
    adapter: str | None = None
    serve_command: str | None = None
    modelfile: str | None = None
    smoke_request: str | None = None


@task
def export(promotion: Promotion, registered: Registered, out_dir: str) -> Exported:
    """Write the merged model, the adapter and the serving files for the promoted version, or the canary's (an engine
    serves it next to the champion); none when blocked."""
    if not (promotion.promoted or promotion.canary):
        return Exported(skipped="not promoted")
    aligned, base = registered.aligned, registered.prepared.base
    return Exported(**export_model(base.path, aligned.model_dump(), Path(out_dir), registered.model_name,
                                   base.max_length or 2048))


if __name__ == "__main__":
    print(json.dumps(export_model(sys.argv[1], {"adapter": sys.argv[2], "model": None}, Path(sys.argv[3]),
                                  "tunegate", 2048), indent=2))
