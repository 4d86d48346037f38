"""Quantized variants against the unquantized champion: tokens/s, resident memory and the gate's verdict, one run.

    python bench/quantize_speed.py --workdir /tmp/qbench --methods int8 int8-dynamic --rounds 3 --write

1. The champion: `tunegate run configs/demo.yaml` (SmolLM2-135M-Instruct, the bundled demo) into a store under
   --workdir; skipped when that store already has a champion (rerun with the same --workdir). A champion
   the gate did not promote is promoted by override, and the output says so.
2. Each method: `tunegate quantize 1 --method M` (flows/quantize.py) against that champion under the demo's
   gate rules; the champion alias is put back on version 1 after each, so every variant meets the
   unquantized model.
3. Speed and memory: every version is loaded the way serve-model loads it (serve/backend.load_version) in
   a fresh process, which then generates --max-tokens tokens greedily (min_new_tokens = max_new_tokens,
   so every model writes the same count) for each of --prompts demo prompts, one request at a time, on
   --threads torch threads. Processes alternate (fp32, int8, ..., fp32, int8, ...) for --rounds rounds,
   so load that changes during the run hits all alike. Reported: median tok/s over rounds, resident memory
   (VmRSS) after loading and one warm-up request, the peak (VmHWM), both also as the growth over the same
   process before loading, and the safetensors size.
Prints a markdown section for docs/benchmarks.md (--write puts it there), with the CPU line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import cpu, write_section  # noqa: E402


def memory_mib() -> dict[str, float]:
    """This process's resident memory now (VmRSS) and at its peak (VmHWM), in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def worker(tracking_uri: str, version: str, prompts: list[str], max_tokens: int, threads: int) -> dict:
    """One version loaded as serve-model loads it, then timed: tok/s and memory."""
    import torch
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM  # noqa: F401  imported before the baseline: both need it

    from serve.backend import load_version, prompt_ids
    from tasks.quantize import int8_layers

    torch.set_num_threads(threads)
    before = memory_mib()["VmRSS"]  # torchao is imported by the int8 load: its memory counts against int8
    loaded = load_version(MlflowClient(tracking_uri), "bench-model", version)

    def answer(prompt: str) -> int:
        ids = prompt_ids(loaded, [{"role": "user", "content": prompt}])
        with torch.no_grad():
            out = loaded.model.generate(**ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                        pad_token_id=loaded.tokenizer.eos_token_id)
        return out.shape[1] - ids["input_ids"].shape[1]

    answer(prompts[0])  # warm-up
    memory = memory_mib()
    start = time.perf_counter()
    tokens = sum(answer(p) for p in prompts)
    seconds = time.perf_counter() - start
    return {"tok_s": tokens / seconds, "tokens": tokens, "rss": memory["VmRSS"], "peak": memory["VmHWM"],
            "before": before, "int8_layers": list(int8_layers(loaded.model)), "load_s": loaded.load_seconds}


def champion(args, params, tracking) -> str:
    """Version 1 of the store as the champion: trained by the demo flow unless the store already has it."""
    from flows.finetune import finetune_pipeline
    from mlflow import MlflowClient
    from tasks.promote import promote_version
    from tunegate.registry import CHAMPION, get_alias

    client = MlflowClient(tracking.tracking_uri)
    if get_alias(client, tracking.registered_model, CHAMPION) is not None:
        return "already in the store"
    state = finetune_pipeline(params.model_copy(update={"run_name": "champion"}), return_state=True)
    summary = json.loads((Path(params.output_dir) / "champion" / "summary.json").read_text())
    if summary["promoted"]:
        return f"promoted by its gate ({summary['gate']}; {state.name})"
    promote_version(tracking, summary["model_version"], override=True, reason="benchmark: the demo model as champion")
    return f"gate {summary['gate']} on {summary['regressed']}: promoted by override for the benchmark"


def gate_variant(method: str, params, tracking) -> dict:
    """`tunegate quantize 1 --method M`; then the champion alias back on version 1."""
    import mlflow

    from flows.quantize import quantize_version
    from tasks.promote import rollback
    from tunegate.config import QuantizeConfig
    from tunegate.registry import CHAMPION, connect, get_alias

    run_name = f"quantize-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    state = quantize_version("1", QuantizeConfig(method=method), params.model_copy(update={"run_name": run_name}),
                             return_state=True)
    summary = json.loads((Path(params.output_dir) / run_name / "summary.json").read_text())
    client, _ = connect(tracking)
    decision = mlflow.artifacts.load_dict(f"runs:/{summary['mlflow_run_id']}/gate/decision.json")
    if str(get_alias(client, tracking.registered_model, CHAMPION).version) != "1":
        rollback(tracking, reason="benchmark: every variant meets the unquantized champion", to="1")
    return {**summary, "rows": decision["rows"], "state": state.name, "seconds": time.perf_counter() - start}


def measure(args, tracking, versions: dict[str, str], prompts: list[str]) -> dict[str, list[dict]]:
    """Alternating fresh processes per version and round; each returns worker()'s numbers."""
    runs: dict[str, list[dict]] = {label: [] for label in versions}
    for _ in range(args.rounds):
        for label, version in versions.items():
            out = subprocess.run([sys.executable, __file__, "--worker", version, "--tracking-uri", tracking.tracking_uri,
                                  "--max-tokens", str(args.max_tokens), "--prompts", str(args.prompts),
                                  "--threads", str(args.threads)], cwd=ROOT, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"worker for {label} failed:\n{out.stderr[-3000:]}")
            runs[label].append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def report(args, how: str, gates: dict[str, dict], runs: dict[str, list[dict]], sizes: dict[str, int],
           load: tuple[float, float]) -> str:
    from tasks.gate import fmt

    lines = ["## Quantized variants: int8 against the unquantized champion (SmolLM2-135M demo)", "",
             f"Command: `.venv/bin/python bench/quantize_speed.py --methods {' '.join(args.methods)} --rounds "
             f"{args.rounds} --max-tokens {args.max_tokens} --prompts {args.prompts} --threads {args.threads}`",
             f"({time.strftime('%Y-%m-%d')}). The champion: the demo run, {how}.", "",
             f"**CPU:** {cpu()}; load average {load[0]:.2f} at start, {load[1]:.2f} at the end; {args.threads} torch "
             "threads, one request at a time.", "",
             "| model | weights (safetensors) | RSS after load, MiB (growth) | peak RSS, MiB (growth) | tok/s, median "
             "of rounds | vs fp32 | int8 linear layers |", "|---|---|---|---|---|---|---|"]
    base = statistics.median(r["tok_s"] for r in runs["fp32"])
    for label, rounds in runs.items():
        tok_s = statistics.median(r["tok_s"] for r in rounds)
        rss, peak = statistics.median(r["rss"] for r in rounds), statistics.median(r["peak"] for r in rounds)
        grow = statistics.median(r["rss"] - r["before"] for r in rounds)
        grow_peak = statistics.median(r["peak"] - r["before"] for r in rounds)
        layers = "{}/{}".format(*rounds[0]["int8_layers"])
        each = ", ".join(f"{r['tok_s']:.2f}" for r in rounds)
        lines.append(f"| {label} | {sizes[label] / 2**20:.0f} MiB | {rss:.0f} (+{grow:.0f}) | {peak:.0f} "
                     f"(+{grow_peak:.0f}) | {tok_s:.2f} ({each}) | {tok_s / base:.2f}x | {layers} |")
    for method, g in gates.items():
        lines += ["", f"Gate of the {method} variant (version {g['model_version']}) against {g['baseline']}, the "
                      f"demo's rules: **{g['gate']}**" + (f" ({', '.join(g['regressed'])})" if g["regressed"] else "")
                  + f"; quantize flow {g['seconds'] / 60:.1f} min, champion scores from the cache: "
                    f"{', '.join(g['eval_cache_hits']['baseline']) or 'none'}.", "",
                  "| task | metric | champion | variant | delta | 95% CI | p | verdict |", "|---|---|---|---|---|---|---|---|"]
        for r in g["rows"]:
            lines.append(f"| {r['task']} | {r['metric']} | {fmt(r['baseline_score'], '.4f')} | "
                         f"{fmt(r['candidate_score'], '.4f')} | {fmt(r['delta'], '+.4f')} | [{fmt(r['ci_low'], '+.4f')}, "
                         f"{fmt(r['ci_high'], '+.4f')}] | {fmt(r['p_value'], '.3g')} | {r['verdict']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="/tmp/tunegate-quantize-bench", help="store and run folders; reused")
    parser.add_argument("--methods", nargs="+", default=["int8"], choices=["int8", "int8-dynamic"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="demo config override")
    parser.add_argument("--write", action="store_true", help="put the section into docs/benchmarks.md")
    parser.add_argument("--worker", metavar="VERSION", help=argparse.SUPPRESS)
    parser.add_argument("--tracking-uri", help=argparse.SUPPRESS)
    args = parser.parse_args()
    holdout = json.loads((ROOT / "data" / "demo" / "general_holdout.json").read_text())
    prompts = [row["instruction"] for row in holdout][: args.prompts]
    if args.worker:
        print(json.dumps(worker(args.tracking_uri, args.worker, prompts, args.max_tokens, args.threads)))
        return

    from mlflow import MlflowClient

    from tunegate.config import load_config

    load_start = os.getloadavg()[0]
    work = Path(args.workdir).resolve()
    sets = [f"tracking.tracking_uri=sqlite:///{work}/mlflow.db", f"tracking.artifact_root={work}/artifacts",
            "tracking.experiment=bench", "tracking.registered_model=bench-model", f"output_dir={work}/outputs",
            *args.set]
    params = load_config(ROOT / "configs" / "demo.yaml", sets)
    tracking = params.tracking
    how = champion(args, params, tracking)
    gates = {method: gate_variant(method, params, tracking) for method in args.methods}
    versions = {"fp32": "1", **{method: g["model_version"] for method, g in gates.items()}}
    client = MlflowClient(tracking.tracking_uri)
    sizes = {"fp32": int(client.get_model_version("bench-model", gates[args.methods[0]]["model_version"]).tags[
        "quantize.source_bytes"]), **{m: g["bytes"] for m, g in gates.items()}}
    runs = measure(args, tracking, versions, prompts)
    text = report(args, how, gates, runs, sizes, (load_start, os.getloadavg()[0]))
    print("\n" + text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
