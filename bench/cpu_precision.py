"""Does the CPU precision tunegate/precision.py measures (a matmul) pick the faster training step?

    .venv/bin/python bench/cpu_precision.py [--model bundled:smollm2-135m-instruct] [--rounds 4] [--seq 128] [--batch 8]

Prints this CPU's model and flags, the matmul measurement that `precision: auto` uses (forced, not the
cache), then times LoRA training steps (forward + backward + AdamW, r=16 on every linear layer) of the
same model in fp32 and in bf16 the way the Trainer runs it on CPU (bf16 weights, fp32 adapters, CPU
autocast). The two alternate step by step on the same batches, so load from other jobs hits both alike;
the first round is warm-up and not counted. Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, not an installed copy

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tunegate.precision import cpu_identity, cpu_matmul_speeds, precision_from_speeds  # noqa: E402
from tunegate.models import resolve_base_model  # noqa: E402


def lora_model(path: str, dtype: torch.dtype):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=dtype),
                           LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def step(model, opt, ids: torch.Tensor, bf16: bool) -> float:
    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=4, help="steps per precision; the first is warm-up")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    cpu = cpu_identity()
    flags = " ".join(f for f in cpu["flags"] if "avx" in f or "amx" in f)
    speeds = cpu_matmul_speeds(Path("/tmp/tunegate-bench-precision"), force=True)
    precision, why = precision_from_speeds(speeds)
    load_before = os.getloadavg()[0]
    path = resolve_base_model(args.model)
    models = {"fp32": lora_model(path, torch.float32), "bf16": lora_model(path, torch.bfloat16)}
    vocab = models["fp32"][0].config.vocab_size
    gen = torch.Generator().manual_seed(0)
    times = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        ids = torch.randint(100, vocab - 1, (args.batch, args.seq), generator=gen)
        for name, (model, opt) in models.items():
            times[name].append(step(model, opt, ids, bf16=name == "bf16"))
    load_after = os.getloadavg()[0]
    step_s = {name: statistics.mean(t[1:]) for name, t in times.items()}
    print(f"\n**CPU:** {cpu['cpu']}; {flags}; torch {cpu['torch']}, {cpu['threads']} threads; "
          f"load average {load_before:.1f} -> {load_after:.1f}")
    print(f"\nmatmul ({speeds['seconds']} s): {why}")
    print(f"\n| measure | fp32 | bf16 | bf16 speed-up |\n|---|---|---|---|")
    print(f"| matmul 384x384, GFLOP/s | {speeds['fp32_gflops']:.1f} | {speeds['bf16_gflops']:.1f} | "
          f"{speeds['bf16_gflops'] / speeds['fp32_gflops']:.2f}x |")
    print(f"| LoRA step, {args.batch} x {args.seq} tokens, s (mean of {args.rounds - 1}) | {step_s['fp32']:.2f} | "
          f"{step_s['bf16']:.2f} | {step_s['fp32'] / step_s['bf16']:.2f}x |")
    print(f"\nper step, fp32: {[round(t, 2) for t in times['fp32']]}; bf16: {[round(t, 2) for t in times['bf16']]}")
    print(f"precision: auto picks {precision}; the faster training step here is "
          f"{'bf16' if step_s['bf16'] < step_s['fp32'] else 'fp32'}")


if __name__ == "__main__":
    main()
