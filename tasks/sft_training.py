"""The SFT training job: TRL's SFTTrainer with LoRA, DoRA, QLoRA or a full fine-tune.

    python -m tasks.sft_training --spec SPEC.json    # one training job; `accelerate launch` runs this on every rank

Setup (hardware checks, precision, model, adapter), then train (resuming from the last complete
checkpoint if one exists), then save safetensors and a loss plot. The sft stage (tasks/sft.py) runs
it in its own process, or writes the spec and runs this module under `accelerate launch` (DDP,
DeepSpeed, FSDP) when `num_processes > 1`. It imports no Prefect or MLflow, so accelerate's ranks
and a bare GPU machine (bench/gpu_check.py) need only the training stack.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tunegate.config import SFTConfig
from tunegate.precision import choose_precision

log = logging.getLogger(__name__)
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"


def check_training_setup(cfg: SFTConfig) -> None:
    """Refuse, before any work, what this machine cannot run; say why and what to use instead."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.method == "qlora" and not cuda:
        raise ValueError(
            "sft.method=qlora needs a CUDA GPU: bitsandbytes 4-bit NF4 layers have no CPU kernels for training. "
            "Use sft.method=lora (or dora) on this machine, or run on a GPU worker."
        )
    if cfg.optimizer == "adamw_8bit" and not cuda:
        raise ValueError("sft.optimizer=adamw_8bit needs a CUDA GPU (bitsandbytes); use adamw_torch on CPU.")
    # Without these checks a missing package fails minutes later: after the model has loaded, or inside a rank.
    needs_bnb = cfg.method == "qlora" or cfg.optimizer == "adamw_8bit"
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"sft.method={cfg.method}, sft.optimizer={cfg.optimizer} needs bitsandbytes, which is not "
                         "installed here: pip install bitsandbytes (`make gpu-wheels` carries it to a GPU machine).")
    if cfg.accelerate_config:
        path = Path(cfg.accelerate_config)
        if not path.exists():
            raise FileNotFoundError(f"sft.accelerate_config not found: {cfg.accelerate_config}")
        deepspeed = yaml.safe_load(path.read_text()).get("distributed_type") == "DEEPSPEED"
        if deepspeed and importlib.util.find_spec("deepspeed") is None:
            raise ValueError(f"sft.accelerate_config={cfg.accelerate_config} runs DeepSpeed, which is not installed "
                             "here: pip install deepspeed (`make gpu-wheels` carries it to a GPU machine).")


def precision_choice(requested: str) -> dict:
    """choose_precision as a JSON-able record, for the spec of a distributed run and the summary."""
    precision, reason, measured = choose_precision(requested)
    return {"precision": precision, "reason": reason, "cpu_matmul_gflops": measured}


def estimate_training_bytes(model, cfg: SFTConfig, precision: str) -> int:
    """Rough peak memory: weights + grads/Adam state of trainable params + activations (no checkpointing)."""
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = {"fp32": 4, "bf16": 2, "fp16": 2}[precision] * n_params
    trainable = n_params if cfg.method == "full" else n_params // 50  # adapters: ~1-2% of the weights
    state_bytes = trainable * (4 + 8)  # fp32 grads + two Adam moments
    # ~34 bytes per token per hidden unit per layer, plus attention scores (Korthikanti et al., 2022).
    tokens = cfg.batch_size * cfg.max_length
    act = c.num_hidden_layers * (34 * tokens * c.hidden_size + 5 * c.num_attention_heads * cfg.batch_size * cfg.max_length**2)
    return weight_bytes + state_bytes + act * {"fp32": 2, "bf16": 1, "fp16": 1}[precision]


def choose_gradient_checkpointing(cfg: SFTConfig, model, precision: str) -> tuple[bool, str]:
    import torch

    if cfg.gradient_checkpointing != "auto":
        return cfg.gradient_checkpointing == "on", "set in the config"
    if not torch.cuda.is_available():
        return False, "CPU: memory is plentiful and checkpointing only costs time"
    need = estimate_training_bytes(model, cfg, precision)
    total = torch.cuda.mem_get_info()[1]
    if need > 0.85 * total:
        return True, f"estimated {need / 2**30:.1f} GiB > 85% of {total / 2**30:.1f} GiB on the GPU"
    return False, f"estimated {need / 2**30:.1f} GiB fits in {total / 2**30:.1f} GiB"


def choose_lm_head(cfg: SFTConfig, vocab_size: int) -> tuple[str, str]:
    """'chunked' (TRL's fused head: never builds the full logits, recomputes them in backward) or 'plain'."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return "chunked", "GPU: TRL's chunked head saves the memory of the full logits"
    # fp32 logits, their log-softmax and its gradient, for one micro-batch
    need = 3 * 4 * cfg.batch_size * cfg.max_length * vocab_size
    free = psutil.virtual_memory().available
    if need > 0.25 * free:
        return "chunked", f"full logits need ~{need / 2**30:.1f} GiB, over 25% of the {free / 2**30:.1f} GiB free"
    return "plain", (f"CPU: the full logits (~{need / 2**30:.1f} GiB) fit in RAM, and TRL's chunked head would "
                     "recompute the LM head in backward (~20% of a step here, docs/benchmarks.md)")


def sft_trainer_class(lm_head: str):
    """TRL's SFTTrainer, or for lm_head='plain' one whose loss is the model's own over the full logits."""
    import torch
    from transformers import Trainer
    from trl import SFTTrainer

    if lm_head == "chunked":
        return SFTTrainer

    class PlainHeadSFTTrainer(SFTTrainer):
        """Same data, collator, loss and logs as SFTTrainer, minus its entropy/token-accuracy metrics."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs["use_cache"] = False
            if self.model.training:  # the input-token count TRL's compute_loss logs as num_tokens
                if "attention_mask" in inputs:
                    local = inputs["attention_mask"].sum()
                else:  # padding-free packing
                    local = torch.tensor(inputs["position_ids"].size(1))
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(local.to(self.args.device)).sum())
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)

    return PlainHeadSFTTrainer


def truncate_rows(dataset, max_length: int):
    """TRL's truncation of tokenized rows (keep the start; drop a row left with no trained token), which TRL skips
    when padding-free. Validated data has no row over max_length (the length suite), so this is usually a no-op."""
    if max((len(ids) for ids in dataset["input_ids"]), default=0) <= max_length:
        return dataset
    cut = dataset.map(lambda row: {"input_ids": row["input_ids"][:max_length], "labels": row["labels"][:max_length]},
                      desc=f"Truncating to {max_length} tokens")
    return cut.filter(lambda row: any(label != -100 for label in row["labels"]), desc="Dropping fully masked rows")


def load_model(base_model_path: str, cfg: SFTConfig, precision: str, trust_remote_code: bool):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"trust_remote_code": trust_remote_code}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["dtype"] = torch.bfloat16
    else:
        # Weights stay fp32 under fp16 AMP (the scaler needs fp32 master weights); bf16 loads as bf16.
        kwargs["dtype"] = torch.bfloat16 if precision == "bf16" else torch.float32
    return AutoModelForCausalLM.from_pretrained(base_model_path, **kwargs)


def peft_config_for(cfg: SFTConfig):
    from peft import LoraConfig

    if cfg.method == "full":
        return None
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        use_dora=cfg.method == "dora",
        task_type="CAUSAL_LM",
    )


def checkpoint_dir_for(root: Path, base_model_path: str, cfg: SFTConfig, data_hash: str) -> Path:
    """Checkpoints live where a re-run with the same model, config and data finds them."""
    key = hashlib.sha256(f"{base_model_path}|{cfg.model_dump_json()}|{data_hash}".encode()).hexdigest()[:16]
    return root / f"sft-{key}"


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint with its completeness marker; half-written ones (a crash mid-save) are removed."""
    done = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        if (path / COMPLETE_MARKER).exists():
            done.append(path)
        else:
            log.warning("removing incomplete checkpoint %s (no %s)", path, COMPLETE_MARKER)
            shutil.rmtree(path, ignore_errors=True)
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def marker_callback():
    from transformers import TrainerCallback

    class CheckpointCompleteMarker(TrainerCallback):
        """Trainer calls on_save after weights, optimizer, scheduler and RNG state are all written."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                (ckpt / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step, "time": time.time()}))

    return CheckpointCompleteMarker()


def step_clock():
    """A callback that times every optimizer step (forward, backward, optimizer; not the evaluations and
    checkpoints between steps) and reads GPU memory when training starts (model and adapters in place) and at
    its peak."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class StepClock(TrainerCallback):
        def __init__(self):
            self.step_seconds, self.gpu_memory_at_start, self.peak_gpu_memory = [], None, None
            self._began = None

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:  # loading transients (quantizing, moving to the GPU) are not training memory
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self.gpu_memory_at_start = torch.cuda.memory_allocated()

        def on_step_begin(self, args, state, control, **kwargs):
            self._began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:  # kernels run asynchronously: a step ends when its kernels have
                torch.cuda.synchronize()
            self.step_seconds.append(time.perf_counter() - self._began)

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                self.peak_gpu_memory = torch.cuda.max_memory_allocated()

    return StepClock()


def throughput_and_memory(clock, log_history: list[dict], steps: int) -> dict:
    """Input tokens per step (TRL's num_tokens: non-padding, all ranks), tokens/s over the steps after the first
    (which pays for CUDA kernel selection and allocator growth; None with a single step), GPU memory in bytes."""
    tokens = int(next((h["num_tokens"] for h in reversed(log_history) if "num_tokens" in h), 0)) // max(steps, 1)
    timed = clock.step_seconds[1:]
    rate = round(tokens * len(timed) / sum(timed), 1) if timed else None
    return {"input_tokens_per_step": tokens, "tokens_per_second": rate,
            "gpu_memory_at_start_bytes": clock.gpu_memory_at_start, "peak_gpu_memory_bytes": clock.peak_gpu_memory}


def plot_losses(train: list, evals: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_sft(
    base_model_path: str,
    train_path: str,
    eval_path: str | None,
    cfg: SFTConfig,
    out_dir: Path,
    checkpoint_dir: Path,
    trust_remote_code: bool = False,
    chosen_precision: dict | None = None,
    extra_callbacks: list | None = None,
) -> dict:
    """Train; return where the weights are, the loss curves and what was chosen, with reasons.

    `chosen_precision` (precision_choice's record) is the choice made by the launching process, so that every
    rank of a distributed run trains in the same one; None: choose here. `extra_callbacks`: more Trainer callbacks,
    e.g. a sweep trial's, which reports each eval loss to its pruner."""
    import torch
    from datasets import load_dataset
    from transformers import EarlyStoppingCallback
    from trl import SFTConfig as TRLSFTConfig

    from tunegate.models import load_chat_tokenizer

    check_training_setup(cfg)
    chosen = chosen_precision or precision_choice(cfg.precision)
    precision, precision_why, matmul_speeds = chosen["precision"], chosen["reason"], chosen["cpu_matmul_gflops"]
    tokenizer = load_chat_tokenizer(base_model_path, trust_remote_code)
    model = load_model(base_model_path, cfg, precision, trust_remote_code)
    checkpointing, checkpointing_why = choose_gradient_checkpointing(cfg, model, precision)
    lm_head, lm_head_why = choose_lm_head(cfg, model.config.vocab_size)
    log.info("precision %s (%s); gradient checkpointing %s (%s); LM head %s (%s)", precision, precision_why,
             "on" if checkpointing else "off", checkpointing_why, lm_head, lm_head_why)

    padding_free = cfg.padding_free and not cfg.packing  # packing is padding-free already
    use_eval = bool(eval_path and cfg.eval_steps)
    files = {"train": train_path} | ({"eval": eval_path} if use_eval else {})
    data = load_dataset("json", data_files=files).remove_columns(["id"])

    args = TRLSFTConfig(
        output_dir=str(checkpoint_dir),
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        # TRL leaves truncation to the caller when padding-free without packing (truncate_rows below)
        max_length=None if padding_free else cfg.max_length,
        packing=cfg.packing,
        padding_free=padding_free,
        optim=cfg.optimizer,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=checkpointing,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if use_eval else "no",
        eval_steps=cfg.eval_steps or None,
        load_best_model_at_end=bool(cfg.early_stopping_patience),
        metric_for_best_model="eval_loss" if cfg.early_stopping_patience else None,
        report_to=[],
        dataloader_num_workers=0,
    )
    clock = step_clock()
    callbacks = [marker_callback(), clock, *(extra_callbacks or [])]
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = sft_trainer_class(lm_head)(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["eval"] if use_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config_for(cfg),
        callbacks=callbacks,
    )
    if padding_free:
        trainer.train_dataset = truncate_rows(trainer.train_dataset, cfg.max_length)
        if use_eval:
            trainer.eval_dataset = truncate_rows(trainer.eval_dataset, cfg.max_length)
    resume = last_complete_checkpoint(checkpoint_dir) if checkpoint_dir.exists() else None
    if resume:
        log.info("resuming from %s", resume)
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - start

    weights_dir = out_dir / ("model" if cfg.method == "full" else "adapter")
    trainer.save_model(str(weights_dir))  # safetensors; rank 0 only under accelerate
    if not trainer.is_world_process_zero():
        return {}
    # Trainer pickles its arguments next to the weights; ship JSON instead, never a pickle.
    (weights_dir / "training_args.bin").unlink(missing_ok=True)
    (weights_dir / "training_args.json").write_text(trainer.args.to_json_string())
    history = trainer.state.log_history
    train_curve = [(h["step"], h["loss"]) for h in history if "loss" in h]
    eval_curve = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    plot_losses(train_curve, eval_curve, out_dir / "loss_curve.png")
    stopped_early = cfg.early_stopping_patience > 0 and trainer.state.global_step < trainer.state.max_steps
    summary = {
        "method": cfg.method,
        "adapter": None if cfg.method == "full" else str(weights_dir),
        "model": str(weights_dir) if cfg.method == "full" else None,
        "train_loss": float(result.training_loss),
        "final_loss": train_curve[-1][1] if train_curve else None,
        "loss_curve": train_curve,
        "eval_loss_curve": eval_curve,
        "loss_plot": str(out_dir / "loss_curve.png"),
        "steps": int(trainer.state.global_step),
        "stopped_early": stopped_early,
        "resumed_from": str(resume) if resume else None,
        "resumed_at_step": int(resume.name.split("-")[-1]) if resume else 0,
        "seconds": round(seconds, 1),
        "precision": precision,
        "precision_reason": precision_why,
        "cpu_matmul_gflops": matmul_speeds,
        "gradient_checkpointing": checkpointing,
        "gradient_checkpointing_reason": checkpointing_why,
        "lm_head": lm_head,
        "lm_head_reason": lm_head_why,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        **throughput_and_memory(clock, history, trainer.state.global_step),
        "world_size": trainer.args.world_size,
    }
    (out_dir / "sft_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def launch_distributed(spec: dict, cfg: SFTConfig, out_dir: Path) -> dict:
    """Run this module under `accelerate launch` with the spec; return rank 0's summary."""
    if spec.get("precision") is None:  # chosen here, once: ranks measuring side by side could disagree
        spec = {**spec, "precision": precision_choice(cfg.precision)}
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "sft_spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(cfg.num_processes)]
    if cfg.accelerate_config:
        cmd += ["--config_file", cfg.accelerate_config]
    cmd += ["-m", "tasks.sft_training", "--spec", str(spec_path)]
    log.info("launching: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads((out_dir / "sft_summary.json").read_text())


def run_spec(spec: dict, callbacks: list | None = None) -> dict:
    cfg = SFTConfig.model_validate(spec["cfg"])
    return train_sft(spec["base_model_path"], spec["train"], spec["eval"], cfg, Path(spec["out_dir"]),
                     Path(spec["checkpoint_dir"]), spec["trust_remote_code"], spec.get("precision"), callbacks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run one SFT job from a spec file.")
    parser.add_argument("--spec", required=True, help="JSON written by the sft task")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run_spec(json.loads(Path(parser.parse_args().spec).read_text()))
    import torch.distributed as dist

    if dist.is_initialized():
        # Left to interpreter exit, the gloo/DeepSpeed teardown sometimes aborted a rank (SIGABRT,
        # "terminate called without an active exception") after training had finished.
        dist.barrier()
        dist.destroy_process_group()
