"""Stage 4, sft: supervised fine-tuning with TRL's SFTTrainer and a peft LoRA adapter.

    python -m tasks.sft MODEL_DIR TRAIN_JSONL OUT_DIR   # 2 steps with the default SFT config

Setup (precision, model, adapter), then train, then save the adapter as safetensors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from prefect import task

from tunegate.config import SFTConfig

log = logging.getLogger(__name__)


def choose_precision(requested: str) -> tuple[str, str]:
    """Return (precision, reason). bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    import torch

    if requested != "auto":
        return requested, "set in the config"
    if not torch.cuda.is_available():
        # CPU bf16 matmuls without AMX/AVX512-BF16 run ~100x slower than fp32 (docs/benchmarks.md).
        return "fp32", "no CUDA device: fp32 is the fast path on CPU"
    if torch.cuda.is_bf16_supported():
        return "bf16", f"{torch.cuda.get_device_name()} supports bf16"
    return "fp16", f"{torch.cuda.get_device_name()} has no bf16: fp16 with loss scaling"


def train_sft(
    base_model_path: str,
    train_path: str,
    eval_path: str | None,
    cfg: SFTConfig,
    out_dir: Path,
    trust_remote_code: bool = False,
) -> dict:
    """Train a LoRA adapter; return the adapter path, losses and what was chosen."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig as TRLSFTConfig, SFTTrainer

    from tasks.prepare import load_chat_tokenizer

    precision, why = choose_precision(cfg.precision)
    log.info("precision %s (%s); gradient checkpointing %s", precision, why,
             "on (config)" if cfg.gradient_checkpointing else "off")
    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float32}[precision]
    model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=dtype, trust_remote_code=trust_remote_code)

    files = {"train": train_path} | ({"eval": eval_path} if eval_path else {})
    data = load_dataset("json", data_files=files)
    data = data.remove_columns([c for c in ("id",) if c in data["train"].column_names])

    args = TRLSFTConfig(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=cfg.gradient_checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
    )
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start

    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.save_pretrained(adapter_dir)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    n_tokens = trainer.state.num_input_tokens_seen or None
    summary = {
        "adapter": str(adapter_dir),
        "train_loss": float(result.training_loss),
        "final_loss": losses[-1][1] if losses else None,
        "loss_curve": losses,
        "steps": int(trainer.state.global_step),
        "seconds": round(seconds, 1),
        "precision": precision,
        "precision_reason": why,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "input_tokens_seen": n_tokens,
    }
    (out_dir / "sft_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


@task
def sft(prepared: dict, cfg: SFTConfig, out_dir: str, trust_remote_code: bool = False) -> dict:
    """Fine-tune a LoRA adapter on the train split."""
    return train_sft(prepared["base_model_path"], prepared["train"], None, cfg, Path(out_dir), trust_remote_code)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    out = train_sft(sys.argv[1], sys.argv[2], None, SFTConfig(max_steps=2), Path(sys.argv[3]))
    print(json.dumps({k: v for k, v in out.items() if k != "loss_curve"}, indent=2))
