"""Reward-model scoring against the pairwise LLM judge: pairs per second on the same pairs, same run.

    python bench/reward_speed.py --base bundled:smollm2-135m-instruct --pairs 12 --reward-steps 4

The pairs are bench/judge_speed.py's (the demo's general holdout questions, the reference answer
against a shortened one). The judge is `tunegate serve-model` on the base model under the verdict's
schema (its fastest setting, bench/judge_speed.py), both orders per pair, an empty cache. The reward
model is trained first (TRL RewardTrainer, LoRA on the same base, `--reward-steps` steps on the
demo's identity preferences; its accuracy does not matter for speed) and scores both answers of
every pair in batches as tasks/reward_eval.py does (after one warm-up call), loading reported apart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from judge_speed import comparison  # noqa: E402
from machine import cpu, write_section  # noqa: E402
from serve_speed import register, server_args  # noqa: E402


def identity_pairs() -> list[dict]:
    rows = json.loads((ROOT / "data" / "demo" / "identity_preferences.json").read_text())
    return [{"prompt": [{"role": "user", "content": r["conversations"][0]["value"]}],
             "chosen": {"role": "assistant", "content": r["chosen"]["value"]},
             "rejected": {"role": "assistant", "content": r["rejected"]["value"]}} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--reward-steps", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32, help="room for the judge's reply")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    from cli.serving import serve_model_process
    from tasks.judge import judge_both_orders, judge_summary
    from tasks.promote import promote_version
    from tasks.reward import train_reward_model
    from tasks.reward_eval import reward_prompt, scored_pairs
    from tunegate.reward_model import RewardScorer
    from tunegate.config import JudgeConfig, RewardConfig, TrackingConfig
    from tunegate.models import resolve_base_model

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="reward-speed-"))
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{work}/mlflow.db", artifact_root=str(work / "artifacts"),
                              experiment="bench", registered_model="bench-model")
    base = resolve_base_model(args.base)
    evals = comparison(args.pairs)
    cfg = RewardConfig(max_steps=args.reward_steps)
    started = time.perf_counter()
    summary = train_reward_model(base, identity_pairs(), cfg, work / "reward")
    train_s = time.perf_counter() - started
    pairs = scored_pairs(evals)
    started = time.perf_counter()
    scorer = RewardScorer(summary["path"], cfg.max_length, cfg.score_batch_size)
    load_s = time.perf_counter() - started
    prompts = [reward_prompt(scorer, p["prompt"]) for p in pairs]
    texts = [p["candidate"] for p in pairs] + [p["baseline"] for p in pairs]
    scorer.score(prompts + prompts, texts)  # warm-up: first-call allocations
    started = time.perf_counter()
    scorer.score(prompts + prompts, texts)  # what tasks/reward_eval.py does per pair: both answers
    reward_warm_s = time.perf_counter() - started
    reward_s = load_s + reward_warm_s
    try:
        promote_version(tracking, register(tracking, base, work, 1))
        with serve_model_process(server_args(tracking, work, args, "serve.tracing=false"), work / "judge.log",
                                 600) as url:
            judge_cfg = JudgeConfig(base_url=f"{url}/v1", model="bench-model", max_concurrency=1,
                                    max_tokens=args.max_tokens, timeout_s=300, structured_output=True)
            started = time.perf_counter()
            judged = judge_summary(judge_both_orders(evals, judge_cfg, work / "judge-cache"), judge_cfg)
            judge_s = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(pairs)
    rows = [("LLM judge (serve-model, schema, both orders)", judge_s, f"{judged['no_verdict']} without a verdict"),
            ("reward model, loading included", reward_s, f"loading (LoRA merged) {load_s:.1f} s"),
            ("reward model, loaded", reward_warm_s, "")]
    table = [f"| {way} | {n} | {s:.2f} | {n / s:.2f} | {1000 * s / n:.1f} | {judge_s / s:.0f}x | {note} |"
             for way, s, note in rows]
    text = "\n".join([
        "## Reward model scoring against the LLM judge (issue 24)", "",
        f"Command: `python bench/reward_speed.py --base {args.base} --pairs {args.pairs} --reward-steps "
        f"{args.reward_steps} --threads {args.threads}`. Same {n} pairs (bench/judge_speed.py's), same run: the judge is `tunegate "
        f"serve-model` on {args.base} under the verdict's schema at max_concurrency 1; the reward model is a LoRA "
        f"scalar head on the same base ({summary['steps']} RewardTrainer steps in {train_s:.0f} s, not counted), "
        f"scoring both answers of every pair in batches of {cfg.score_batch_size}; torch threads: {args.threads}.", "",
        f"CPU: {cpu()}; load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}.", "",
        "| scorer | pairs | wall s | pairs/s | ms a pair | vs the judge | note |", "|---|---|---|---|---|---|---|",
        *table, ""])
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
