"""Pairwise judge throughput: pairs judged per second at max_concurrency 1 and 4, with and without
structured outputs, and its share of a run.

    python bench/judge_speed.py --base bundled:smollm2-135m-instruct --pairs 6 --max-tokens 32

The judge is `tunegate serve-model` (tracing off) on a version of the base model, in a temporary
MLflow store; the pairs are the demo's general holdout questions with their reference answer
against a shortened one. Each pair is two requests (both orders), a third and fourth when replies
do not parse (asked in the prompt only, a small model rarely writes the JSON, so expect retries;
under the verdict's schema every finished reply parses). Every row starts with an empty judge
cache. The share of a pipeline run is estimated for the demo's eval prompts (15 domain + 7
assertion docs) against the demo's wall time given with --run-seconds.
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

from machine import cpu, write_section  # noqa: E402
from serve_speed import register, server_args  # noqa: E402

DEMO_EVAL_PROMPTS = 22  # tunegate_domain 15 + tunegate_assertions 7 in configs/demo.yaml


def comparison(n: int):
    from tasks.evaluate import Comparison, Evaluation

    rows = json.loads((ROOT / "data" / "demo" / "general_holdout.json").read_text())[:n]

    def evaluation(label, answers):
        task = {"metrics": {}, "samples": {}, "doc_ids": list(range(n)), "answers": answers,
                "prompts": [r["instruction"] for r in rows]}
        return Evaluation(label=label, model_hash=label, tasks={"tunegate_general": task}, cache_hits=[],
                          eval_run_ids={})

    return Comparison(candidate=evaluation("candidate", [r["output"] for r in rows]),
                      baseline=evaluation("base", [r["output"].split(".")[0][:40] for r in rows]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32, help="room for the judge's reply")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--run-seconds", type=float, default=1230, help="the demo run's wall time (README)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md")
    args = parser.parse_args()

    from cli.serving import serve_model_process
    from tasks.judge import judge_both_orders, judge_summary
    from tasks.promote import promote_version
    from tunegate.config import JudgeConfig, TrackingConfig
    from tunegate.models import resolve_base_model

    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="judge-speed-"))
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{work}/mlflow.db", artifact_root=str(work / "artifacts"),
                              experiment="bench", registered_model="bench-model")
    try:
        promote_version(tracking, register(tracking, resolve_base_model(args.base), work, 1))
        evals = comparison(args.pairs)
        rows, rates = [], {}
        with serve_model_process(server_args(tracking, work, args, "serve.tracing=false"), work / "judge.log",
                                 600) as url:
            for structured in (False, True):
                for concurrency in (1, 4):
                    cfg = JudgeConfig(base_url=f"{url}/v1", model="bench-model", max_concurrency=concurrency,
                                      max_tokens=args.max_tokens, timeout_s=300, structured_output=structured)
                    start = time.perf_counter()
                    cache = work / f"cache-{concurrency}-{structured}"
                    summary = judge_summary(judge_both_orders(evals, cfg, cache), cfg)
                    wall = time.perf_counter() - start
                    requests = 2 * summary["pairs"] + summary["retried"]
                    demo = wall / summary["pairs"] * DEMO_EVAL_PROMPTS
                    rates[structured, concurrency] = summary["pairs"] / wall
                    ratio = (f"{rates[True, concurrency] / rates[False, concurrency]:.2f}x" if structured
                             else "1 (baseline)")
                    rows.append(f"| {'schema' if structured else 'prompt only'} | {concurrency} | "
                                f"{summary['pairs']} | {requests} | {wall:.1f} | {summary['pairs'] / wall:.3f} | "
                                f"{ratio} | {summary['no_verdict']} | {demo:.0f} s = "
                                f"{demo / (args.run_seconds + demo):.0%} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n".join([
        "## Pairwise judge throughput", "",
        f"Command: `python bench/judge_speed.py --base {args.base} --pairs {args.pairs} --max-tokens "
        f"{args.max_tokens}`. Judge: `tunegate serve-model` on {args.base} (tracing off), {args.threads} torch "
        "threads; each pair is judged in both orders, unparseable replies once more; `schema` sends the verdict's "
        "JSON schema as response_format (constrained decoding), `prompt only` does not. The last column estimates "
        f"the judge's time for the demo's {DEMO_EVAL_PROMPTS} eval prompts and its share of a run of "
        f"{args.run_seconds:.0f} s plus that time.", "",
        f"CPU: {cpu()}; load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}.", "",
        "| verdict asked for | max_concurrency | pairs | requests | wall s | pairs/s | vs prompt only | no verdict | "
        "demo's prompts |", "|---|---|---|---|---|---|---|---|---|", *rows, ""])
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
