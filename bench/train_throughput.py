"""Training throughput: tunegate's SFT settings vs raw PyTorch vs TRL's default SFTConfig, same run.

    .venv/bin/python bench/train_throughput.py [--model bundled:smollm2-135m-instruct] [--seq 128] [--batch 8]

All three train the same LoRA (r=16, all linear layers) on the same pre-tokenized batches of
exactly --seq tokens. Tokens/s is measured over steps after the first (warm-up) step.
- raw: a hand loop of forward + backward + AdamW step in fp32: the ceiling to compare against.
- tunegate: the trainer and settings tasks/sft_training.py picks on this hardware (on CPU: the faster of bf16 and fp32
  by its matmul measurement, no checkpointing, and the model's own loss over the full logits instead of TRL's
  chunked LM head); and the same in the precision it did not pick, to check the pick on real training steps.
- chunked head: the same, with TRL's SFTTrainer as it is (its chunked LM head recomputes the head in backward).
- trl-default: SFTConfig defaults (bf16 + gradient checkpointing); on CPU it needs use_cpu=True to start
  (--default-steps 0 skips it).
Prints the CPU model and flags, and a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402
from trl import SFTConfig  # noqa: E402

from tunegate.models import load_chat_tokenizer  # noqa: E402
from tasks.sft_training import choose_lm_head, sft_trainer_class  # noqa: E402
from tunegate.config import SFTConfig as TunegateSFTConfig  # noqa: E402
from tunegate.precision import choose_precision, cpu_identity  # noqa: E402
from tunegate.models import resolve_base_model  # noqa: E402


def lora():
    return LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")


def batches(vocab: int, seq: int, batch: int, steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(100, vocab - 1, (batch, seq), generator=gen) for _ in range(steps)]


def raw_loop(path: str, data: list[torch.Tensor]) -> list[float]:
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), lora())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for ids in data:
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def trainer_loop(path: str, data: list[torch.Tensor], config: SFTConfig, lm_head: str = "chunked") -> list[float]:
    tokenizer = load_chat_tokenizer(path)
    rows = [{"input_ids": row.tolist()} for ids in data for row in ids]
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    timer = StepTimer()
    trainer = sft_trainer_class(lm_head)(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=lora(), callbacks=[timer])
    trainer.train()
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--default-steps", type=int, default=3, help="TRL-default run is slow on CPU")
    args = parser.parse_args()
    path = resolve_base_model(args.model)
    vocab = AutoModelForCausalLM.from_pretrained(path).config.vocab_size
    data = batches(vocab, args.seq, args.batch, args.steps)
    common = dict(output_dir="/tmp/tunegate-bench", per_device_train_batch_size=args.batch, learning_rate=1e-4,
                  max_length=args.seq, report_to=[], save_strategy="no", logging_steps=1000, shuffle_dataset=False,
                  dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
    results = {}
    results["raw PyTorch (fp32 fwd+bwd+AdamW)"] = raw_loop(path, data)
    precision, precision_why, _ = choose_precision("auto")
    print(f"tasks/sft_training.py picks {precision}: {precision_why}")
    head, why = choose_lm_head(TunegateSFTConfig(batch_size=args.batch, max_length=args.seq), vocab)
    print(f"tasks/sft_training.py picks the {head} LM head: {why}")
    for name in (precision, "fp32" if precision == "bf16" else "bf16"):
        ours = SFTConfig(max_steps=args.steps, bf16=name == "bf16", gradient_checkpointing=False, **common)
        label = "tunegate SFT" if name == precision else "tunegate SFT in the precision it did not pick"
        results[f"{label} ({name}, no checkpointing, {head} LM head)"] = trainer_loop(path, data, ours, head)
    ours = SFTConfig(max_steps=args.steps, bf16=precision == "bf16", gradient_checkpointing=False, **common)
    results[f"SFTTrainer, same settings ({precision}), TRL's chunked LM head"] = trainer_loop(path, data, ours, "chunked")
    if args.default_steps:
        default = SFTConfig(max_steps=args.default_steps, **common)  # bf16=True, gradient_checkpointing=True
        results[f"TRL default SFTConfig (bf16={default.bf16}, checkpointing={default.gradient_checkpointing})"] = (
            trainer_loop(path, data[: args.default_steps], default))

    tokens = args.batch * args.seq
    rate = {name: tokens * (len(t) - 1) / sum(t[1:]) for name, t in results.items()}
    raw = rate["raw PyTorch (fp32 fwd+bwd+AdamW)"]
    ours_rate = next(r for name, r in rate.items() if name.startswith("tunegate"))
    print(f"\nmodel {args.model}, LoRA r=16 all-linear, batch {args.batch} x {args.seq} tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    cpu = cpu_identity()
    print(f"CPU: {cpu['cpu']}; flags: {' '.join(f for f in cpu['flags'] if 'avx' in f or 'amx' in f or f == 'fma')}")
    print("\n| setup | s/step | tokens/s | vs raw | tunegate vs this |\n|---|---|---|---|---|")
    for name, t in results.items():
        step = sum(t[1:]) / (len(t) - 1)
        print(f"| {name} | {step:.2f} | {rate[name]:.0f} | {rate[name] / raw:.2f}x | {ours_rate / rate[name]:.2f}x |")


if __name__ == "__main__":
    main()
