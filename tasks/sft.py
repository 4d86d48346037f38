"""Stage 4, sft: supervised fine-tuning with TRL's SFTTrainer: LoRA, DoRA, QLoRA or full.

    python -m tasks.sft --spec SPEC.json    # one training job; `accelerate launch` runs this too

Setup (hardware checks, precision, model, adapter), then train (resuming from the last complete
checkpoint if one exists), then save safetensors and a loss plot. With `num_processes > 1` the
task writes the spec and runs this module under `accelerate launch` (DDP, DeepSpeed, FSDP).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock
from prefect import task
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy
from pydantic import BaseModel, ConfigDict

from tunegate.caching import content_key
from tunegate.config import SFTConfig
from tunegate.models import ResolvedModel

if TYPE_CHECKING:  # not imported at run time: accelerate's ranks import this module and need no data checks
    from tasks.prepare import Prepared

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
    if cfg.accelerate_config and not Path(cfg.accelerate_config).exists():
        raise FileNotFoundError(f"sft.accelerate_config not found: {cfg.accelerate_config}")


# The CPU flags that decide how fast a bf16 matmul can be: native bf16 dot products (AVX512-BF16,
# AMX-BF16) or only conversions to fp32 (AVX2). Logged and cached with every measurement.
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx_vnni", "avx512_vnni")
# Within this ratio the two are a tie, and fp32 wins it: same speed, exact numerics.
BF16_MIN_SPEEDUP = 1.1


def cpu_identity() -> dict:
    """This machine's CPU model and flags (what `lscpu` shows, read from /proc/cpuinfo), torch version, threads."""
    import platform

    import torch

    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "flags") and key.strip() not in info:
                info[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    return {"cpu": info.get("model name") or platform.processor() or platform.machine(),
            "flags": sorted(flags), "bf16_flags": [f for f in BF16_FLAGS if f in flags],
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def measure_matmul_gflops(dtype_name: str, n: int = 384, seconds: float = 0.6) -> float:
    """GFLOP/s of an n x n matmul in this dtype, within about `seconds`: a warm-up call, then calls until the
    time is up. When the warm-up call alone takes that long (bf16 without hardware support), it is the measurement."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    start = time.perf_counter()
    torch.matmul(a, b)
    warm = time.perf_counter()
    if warm - start >= seconds:
        return 2 * n**3 / (warm - start) / 1e9
    calls = 0
    while time.perf_counter() - start < seconds or calls == 0:
        torch.matmul(a, b)
        calls += 1
    return 2 * n**3 * calls / (time.perf_counter() - warm) / 1e9


def cpu_matmul_speeds(cache_root: Path | None = None, force: bool = False) -> dict:
    """bf16 and fp32 matmul GFLOP/s on this CPU, measured once (< 2 s) and cached per CPU, flags, torch, threads."""
    from tunegate.models import cache_dir

    ident = cpu_identity()
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_root or cache_dir() / "cpu-precision") / f"{key}.json"
    if path.exists() and not force:
        return {**json.loads(path.read_text()), "cached": str(path)}
    start = time.perf_counter()
    gflops = {name: round(measure_matmul_gflops(name), 2) for name in ("fp32", "bf16")}
    measured = {"bf16_gflops": gflops["bf16"], "fp32_gflops": gflops["fp32"],
                "seconds": round(time.perf_counter() - start, 2), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                             time.gmtime()),
                **{k: ident[k] for k in ("cpu", "bf16_flags", "torch", "threads")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{time.time_ns()}.tmp")
    tmp.write_text(json.dumps(measured, indent=2))
    tmp.replace(path)  # atomic: a concurrent run reads a whole file or none
    return {**measured, "cached": None}


def precision_from_speeds(speeds: dict) -> tuple[str, str]:
    """The faster of bf16 and fp32 by the measured numbers; fp32 on a tie (within BF16_MIN_SPEEDUP)."""
    bf16, fp32 = speeds["bf16_gflops"], speeds["fp32_gflops"]
    where = f"{speeds['cpu']} ({', '.join(speeds['bf16_flags']) or 'no AVX2/AVX512/AMX'})"
    numbers = f"bf16 matmul {bf16:.1f} GFLOP/s vs fp32 {fp32:.1f} GFLOP/s on {where}, torch {speeds['torch']}"
    when = f"cached from {speeds['measured_at']}" if speeds.get("cached") else "measured now"
    if bf16 >= BF16_MIN_SPEEDUP * fp32:
        return "bf16", f"{numbers} ({when}): bf16 is {bf16 / fp32:.1f}x faster"
    return "fp32", (f"{numbers} ({when}): bf16 is not at least {BF16_MIN_SPEEDUP}x faster, so fp32 "
                    f"({fp32 / max(bf16, 1e-9):.1f}x bf16's speed, exact)")


def choose_precision(requested: str) -> tuple[str, str, dict | None]:
    """Return (precision, reason, CPU matmul measurement or None). On GPUs: bf16 where supported, else fp16.
    On CPU: whichever of bf16 and fp32 measured faster on this CPU (once per machine, cached)."""
    import torch

    if requested != "auto":
        return requested, "set in the config", None
    if not torch.cuda.is_available():
        # bf16 matmuls are ~100x slower than fp32 without AVX512-BF16/AMX, and can be faster with them.
        speeds = cpu_matmul_speeds()
        return *precision_from_speeds(speeds), speeds
    if torch.cuda.is_bf16_supported():
        return "bf16", f"{torch.cuda.get_device_name()} supports bf16", None
    return "fp16", f"{torch.cuda.get_device_name()} has no bf16: fp16 with loss scaling", None


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
        max_length=cfg.max_length,
        packing=cfg.packing,
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
    callbacks = [marker_callback(), *(extra_callbacks or [])]
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
        "input_tokens_per_step": int(next((h["num_tokens"] for h in reversed(history) if "num_tokens" in h), 0))
        // max(trainer.state.global_step, 1),
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
    cmd += ["-m", "tasks.sft", "--spec", str(spec_path)]
    log.info("launching: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads((out_dir / "sft_summary.json").read_text())


def run_spec(spec: dict, callbacks: list | None = None) -> dict:
    cfg = SFTConfig.model_validate(spec["cfg"])
    return train_sft(spec["base_model_path"], spec["train"], spec["eval"], cfg, Path(spec["out_dir"]),
                     Path(spec["checkpoint_dir"]), spec["trust_remote_code"], spec.get("precision"), callbacks)


@task
def check_setup(cfg: SFTConfig) -> None:
    """Fail in seconds, before data work, when this machine or the pipeline cannot run the training config."""
    check_training_setup(cfg)


class Trained(BaseModel):
    """The SFT weights (an adapter, or the whole model for `full`), what they were trained on, and how it went."""

    model_config = ConfigDict(extra="forbid")
    method: str
    adapter: str | None
    model: str | None
    base: ResolvedModel
    data_hash: str
    train_loss: float
    final_loss: float | None
    loss_curve: list[tuple[int, float]]
    eval_loss_curve: list[tuple[int, float]]
    loss_plot: str
    steps: int
    stopped_early: bool
    resumed_from: str | None
    resumed_at_step: int
    seconds: float
    precision: str
    precision_reason: str
    cpu_matmul_gflops: dict | None
    gradient_checkpointing: bool
    gradient_checkpointing_reason: str
    lm_head: str
    lm_head_reason: str
    trainable_params: int
    input_tokens_per_step: int
    world_size: int


def _sft_cache_key(context, parameters) -> str:
    # The same data, base model and config reuse the finished weights.
    prepared, cfg = parameters["prepared"], parameters["cfg"]
    return content_key(Path(parameters["checkpoint_root"]).parent, prepared.data_hash, prepared.base.path,
                       cfg.model_dump_json())


@task(cache_policy=TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=_sft_cache_key), persist_result=True)
def sft(prepared: Prepared, cfg: SFTConfig, out_dir: str, checkpoint_root: str,
        callbacks: list | None = None) -> Trained:
    """Fine-tune on the train split; eval loss on the held-out split when sft.eval_steps > 0.

    callbacks: Trainer callbacks of the caller (a sweep trial's pruner); they live in this process, so they need
    sft.num_processes 1. They are not part of the cache key: a callback that stops training raises, and a task that
    raised caches nothing."""
    if callbacks and cfg.num_processes > 1:
        raise ValueError("Trainer callbacks run in this process; sft.num_processes > 1 trains in others (accelerate)")
    base = prepared.base
    spec = {
        "base_model_path": base.path,
        "train": prepared.train,
        "eval": prepared.eval,
        "cfg": cfg.model_dump(),
        "out_dir": out_dir,
        "checkpoint_dir": str(checkpoint_dir_for(Path(checkpoint_root), base.path, cfg, prepared.data_hash)),
        "trust_remote_code": base.trust_remote_code,
    }
    Path(checkpoint_root).mkdir(parents=True, exist_ok=True)
    # Two runs started at once with the same model, config and data share the checkpoint folder: the second
    # waits here, then resumes from the first one's last checkpoint instead of writing into it at the same time.
    with FileLock(spec["checkpoint_dir"] + ".lock"):
        summary = launch_distributed(spec, cfg, Path(out_dir)) if cfg.num_processes > 1 else run_spec(spec, callbacks)
    return Trained(**summary, base=base, data_hash=prepared.data_hash)


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
