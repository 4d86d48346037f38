"""Stage: quantize a registered version's merged weights with torchao; safetensors in, safetensors out.

    tunegate quantize 3 --method int8 --config configs/demo.yaml    # the gated flow: flows/quantize.py
    python -m tasks.quantize MODEL_DIR OUT_DIR [int8|int8-dynamic]  # this stage alone, on a local checkpoint

Methods, through transformers' TorchAoConfig (torchao: PyTorch's own quantization library):
- int8: weight-only, one scale per output row (Int8WeightOnlyConfig). Weights are stored and held in memory
  as int8; torchao's eager linear converts them to the activations' dtype (fp32 here) for each matmul, so the
  variant saves memory, not time, unless something compiles it (docs/benchmarks.md has both).
- int8-dynamic: int8 weights, and activations quantized to int8 per token at run time
  (Int8DynamicActivationInt8WeightConfig); the matmuls are int8 (torch._int_mm). More rounding than int8.
- gguf: refused before any work, with the reason (GGUF_REFUSED).

Every linear layer but the output head is quantized (transformers keeps the head, which SmolLM2 ties to the
input embedding, in fp32). save_pretrained writes safetensors (torchao's tensors flattened, their layout in
the file's metadata, the quantization_config in config.json). Before anything is registered, the written
folder is loaded back through serve/backend.load_checkpoint, the serving loader (from_pretrained with
use_safetensors=True), and every quantized layer must hold int8 weights there.
"""

from __future__ import annotations

import sys
import time
from importlib.metadata import version as package_version
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from tunegate.config import QuantizeConfig, TrackingConfig
from tunegate.registry import connect

TORCHAO_CONFIGS = {"int8": "Int8WeightOnlyConfig", "int8-dynamic": "Int8DynamicActivationInt8WeightConfig"}
QUANTIZED_FROM = "quantized_from"  # the tag that marks a registered version as a quantized variant
GGUF_REFUSED = (
    "--method gguf: tunegate does not write GGUF. The gguf package on PyPI (0.19, installed) reads and writes GGUF "
    "files but has no Hugging Face converter; that is llama.cpp's convert_hf_to_gguf.py, which no PyPI wheel "
    "installs (on PyPI it is only inside the llama-cpp-python source archive, under vendor/llama.cpp/). Registered "
    "versions also keep safetensors weights only, which is what serve-model loads. To hand a version to llama.cpp or "
    "Ollama, convert its merged/ weights yourself: `python convert_hf_to_gguf.py MERGED_DIR --outtype q8_0 "
    "--outfile model.gguf` from a llama.cpp checkout (it also needs `pip install sentencepiece`), then "
    "`FROM ./model.gguf` in an Ollama Modelfile. Use --method int8 or int8-dynamic for a gated, served variant.")


class QuantizeRefused(ValueError):
    """A method this machine cannot run, or a version that cannot be quantized; raised before any work."""


def check_method(method: str) -> None:
    """Refuse a method that cannot run here, naming why."""
    if method == "gguf":
        raise QuantizeRefused(GGUF_REFUSED)
    if method not in TORCHAO_CONFIGS:
        raise QuantizeRefused(f"unknown method {method!r}; choose from {sorted(TORCHAO_CONFIGS)} (gguf: refused)")


def safetensors_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


@task
def check_request(version: str, cfg: QuantizeConfig, tracking: TrackingConfig) -> None:
    """Refuse, before any work, an unavailable method, an unknown version or one that is already quantized."""
    from mlflow.exceptions import MlflowException

    check_method(cfg.method)
    client, _ = connect(tracking)
    name = tracking.registered_model
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException:
        raise QuantizeRefused(f"{name} has no version {version}") from None
    if QUANTIZED_FROM in mv.tags:
        raise QuantizeRefused(f"{name} version {version} is already a quantized variant ({mv.tags.get('quantize.method')} "
                              f"of version {mv.tags[QUANTIZED_FROM]}); quantize version {mv.tags[QUANTIZED_FROM]}")
    if "merged" not in mv.tags:
        raise QuantizeRefused(f"{name} version {version} has no `merged` tag (no merged weights): it was registered "
                              "before serving existed; register it again")


class Source(BaseModel):
    """The registered version to quantize: its merged weights on this machine and the lineage the variant keeps."""

    model_config = ConfigDict(extra="forbid")
    version: str
    run_id: str
    merged: str
    bytes: int
    config: str
    base_model: str
    data_hash: str


@task(retries=2, retry_delay_seconds=[2, 5])
def quantize_source(version: str, tracking: TrackingConfig, out_dir: str) -> Source:
    """Download the version's merged safetensors weights (its `merged` tag), as serve-model does."""
    import mlflow

    client, _ = connect(tracking)
    mv = client.get_model_version(tracking.registered_model, str(version))
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.tags["merged"], dst_path=out_dir)
    return Source(version=str(version), run_id=mv.run_id, merged=local, bytes=safetensors_bytes(local),
                  config=mv.tags.get("config", "{}"), base_model=mv.tags.get("base_model", ""),
                  data_hash=mv.tags.get("data_hash", ""))


def int8_layers(model) -> tuple[int, int]:
    """(linear layers whose weight is a torchao int8 tensor with int8 data, all linear layers) of a loaded model."""
    import torch
    from torchao.quantization import Int8Tensor

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    int8 = [m for m in linears if isinstance(m.weight, Int8Tensor) and m.weight.qdata.dtype == torch.int8]
    return len(int8), len(linears)


def quantize_checkpoint(source_dir: str, out_dir: Path, method: str, trust_remote_code: bool = False) -> dict:
    """Quantize a local fp32 checkpoint while loading it; write it as safetensors and as a chat MLflow Model.

    Returns the folders, sizes and how many layers the serving loader finds in int8.
    """
    import torch
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    from serve.backend import load_checkpoint
    from tunegate.chat_model import save_chat_model

    check_method(method)
    start = time.perf_counter()
    config = {"int8": Int8WeightOnlyConfig, "int8-dynamic": Int8DynamicActivationInt8WeightConfig}[method]()
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32, trust_remote_code=trust_remote_code,
                                                 quantization_config=TorchAoConfig(quant_type=config)).eval()
    tokenizer = AutoTokenizer.from_pretrained(source_dir, trust_remote_code=trust_remote_code)
    folder, chat = out_dir / "model", out_dir / "chat"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    library = f"torchao=={package_version('torchao')}"
    save_chat_model(model, tokenizer, str(chat), extra_requirements=(library,))
    seconds = time.perf_counter() - start
    del model
    # What serves is what the serving loader makes of these files: it must find int8 weights, not fp32 ones.
    served = load_checkpoint(folder, "variant", method, trust_remote_code)
    int8, linears = int8_layers(served.model)
    if int8 == 0:
        raise RuntimeError(f"{folder}: the serving loader found no int8 linear layer in the {method} checkpoint")
    unexpected = sorted({p.suffix for p in folder.iterdir()} - {".safetensors", ".json", ".jinja", ".txt", ""})
    if unexpected:
        raise RuntimeError(f"{folder}: weights must be safetensors only; found {unexpected}")
    return {"model": str(folder), "chat_model": str(chat), "bytes": safetensors_bytes(folder),
            "library": f"torchao {package_version('torchao')} ({TORCHAO_CONFIGS[method]})", "requirement": library,
            "int8_layers": int8, "linear_layers": linears, "seconds": round(seconds, 2)}


class Quantized(BaseModel):
    """The quantized variant on this machine (safetensors, and the same as a chat MLflow Model) and what it is."""

    model_config = ConfigDict(extra="forbid")
    source: Source
    method: str
    library: str
    requirement: str
    model: str
    chat_model: str
    bytes: int
    int8_layers: int
    linear_layers: int
    seconds: float


@task
def quantize(cfg: QuantizeConfig, source: Source, out_dir: str) -> Quantized:
    """Quantize the source's merged weights with cfg.method; checked to load as int8 through the serving loader."""
    import json

    trust_remote_code = json.loads(source.config).get("trust_remote_code", False)
    done = quantize_checkpoint(source.merged, Path(out_dir), cfg.method, trust_remote_code)
    return Quantized(source=source, method=cfg.method, **done)


if __name__ == "__main__":
    print(quantize_checkpoint(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "int8"))
