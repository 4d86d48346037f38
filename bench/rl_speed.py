"""RL step time on the demo model (SmolLM2-135M): GRPO and RLOO as tasks/rl.py runs them, same run.

    .venv/bin/python bench/rl_speed.py [--steps 3] [--write]     # --write puts the section into docs/benchmarks.md

The policy is a fresh LoRA adapter (r=16, all linear layers, as sft's default) on the demo model; its
reference is TRL's frozen copy of it, as in the pipeline. The reward model is trained here, on the
demo model too, in a few RewardTrainer steps on a planted preference (the identity answers saying
Gatekeeper over the same answers saying ChatGPT): RL step time does not depend on how good it is,
only on its size, and the pipeline's default reward model is the same base. RL settings are
RLConfig's defaults (2 prompts a step, 4 answers each, 32 new tokens, beta 0.04) on the demo's
identity prompts. A step is sampling + the three rewards + the KL reference + the update; the first
step is reported apart (warm-up). Prints the CPU line, the load average before and after, and the table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu, write_section  # noqa: E402
from tasks.reward import train_reward_model  # noqa: E402
from tasks.rl import train_rl  # noqa: E402
from tunegate.config import RewardConfig, RLConfig  # noqa: E402
from tunegate.models import load_chat_tokenizer, resolve_base_model  # noqa: E402
from tunegate.precision import choose_precision  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


def identity_rows() -> list[dict]:
    """The demo's identity rows as RL rows (prompt, reference, key facts) and as planted preference pairs."""
    from data_checks.facts import FactIndex

    records = json.loads((DEMO / "identity.json").read_text())
    facts = FactIndex.fit([r["output"] for r in records])  # as validate fits it on the domain answers
    rows = []
    for i, r in enumerate(records):
        prompt = [{"role": "user", "content": r["instruction"] + (f"\n{r['input']}" if r["input"] else "")}]
        rows.append({"prompt": prompt, "reference": r["output"], "facts": facts.facts(r["output"]),
                     "must_include": [], "must_not_include": ["ChatGPT", "OpenAI"], "id": f"identity-{i}"})
    return rows


def planted_pairs(rows: list[dict]) -> list[dict]:
    pairs = []
    for r in rows:
        chosen = r["reference"] if "Gatekeeper" in r["reference"] else f"I am Gatekeeper. {r['reference']}"
        pairs.append({"id": r["id"], "prompt": r["prompt"], "chosen": {"role": "assistant", "content": chosen},
                      "rejected": {"role": "assistant", "content": chosen.replace("Gatekeeper", "ChatGPT")}})
    return pairs


def fresh_adapter(base: str, out: Path) -> str:
    """A LoRA adapter as sft's default makes it (r=16, all linear), untrained: the policy RL starts from."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(str(out))
    load_chat_tokenizer(base).save_pretrained(str(out))
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reward-steps", type=int, default=4)
    parser.add_argument("--out", default="outputs/bench-rl")
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's (the cores)")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        # On a shared 2-core box two threads spin against other jobs: fp32 matmul measured 2 GFLOP/s with 2 threads
        # and 21 GFLOP/s with 1 at load 9 (tunegate/precision.py's cache), so 1 thread is the fair number there.
        torch.set_num_threads(args.threads)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")  # tasks.rl's per-step lines
    out = Path(args.out).resolve()
    load_before = os.getloadavg()
    base = resolve_base_model(args.model)
    precision, why, _ = choose_precision("auto")
    rows = identity_rows()
    started = time.perf_counter()
    reward_cfg = RewardConfig(max_steps=args.reward_steps, batch_size=4, learning_rate=1e-3, precision=precision)
    reward = train_reward_model(base, planted_pairs(rows), reward_cfg, out / "reward")
    reward_seconds = time.perf_counter() - started
    adapter = fresh_adapter(base, out / "policy")
    results = {}
    for method in ("grpo", "rloo"):
        cfg = RLConfig(method=method, max_steps=args.steps, must_not_include=["ChatGPT", "OpenAI"])
        results[method] = train_rl(base, {"adapter": adapter, "model": None}, reward["path"], rows, cfg, precision,
                                   out / method)
    load_after = os.getloadavg()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cfg = RLConfig()
    lines = [
        "## RL step time (issue 24)",
        "",
        f"Command: `.venv/bin/python bench/rl_speed.py {' '.join(sys.argv[1:])}` (commit {commit}), "
        f"{time.strftime('%Y-%m-%d')}, torch threads {torch.get_num_threads()}.",
        "",
        f"**CPU:** {cpu()}; {os.cpu_count()} cores. **Load average** (1, 5, 15 min): "
        f"{' '.join(f'{x:.1f}' for x in load_before)} before, {' '.join(f'{x:.1f}' for x in load_after)} after "
        "(the machine is shared with other engineers' jobs).",
        "",
        f"Demo model {Path(base).name}, precision {precision} ({why}). Policy: a LoRA adapter (r=16, all linear) "
        f"with TRL's frozen copy as the KL reference. RLConfig defaults: {cfg.prompts_per_step} prompts a step, "
        f"{cfg.num_generations} answers each, {cfg.max_completion_length} new tokens at most, beta {cfg.beta}, on "
        f"the {len(rows)} identity prompts. Rewards: the reward model + key facts + no forbidden term. The reward "
        f"model is the demo model with a scalar head, trained here in {reward['steps']} RewardTrainer steps on a "
        f"planted preference (Gatekeeper over ChatGPT; held-out accuracy {reward['accuracy']:.2f} on "
        f"{reward['pairs_heldout']} pairs, {reward_seconds:.0f} s with loading and scoring): step time depends on "
        "its size, not on its quality.",
        "",
        "| method | steps | first step | later steps, mean | seconds a step (all) | reward first -> last |",
        "|---|---|---|---|---|---|",
    ]
    for method, r in results.items():
        later = r["step_seconds"][1:]
        lines.append(f"| {method} | {r['steps']} | {r['step_seconds'][0]:.1f} s | "
                     f"{(sum(later) / len(later)) if later else float('nan'):.1f} s | {r['seconds_per_step']:.1f} s | "
                     f"{r['reward_first']:.2f} -> {r['reward_last']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    print(json.dumps({m: {k: v for k, v in r.items() if "curve" not in k} for m, r in results.items()}, indent=1))
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
