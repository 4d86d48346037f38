"""Serving speed: `tunegate serve-model` against raw `model.generate`, and tracing on against off, in one run.

    python bench/serve_speed.py --base tiny --max-tokens 32 --threads 2
    python bench/serve_speed.py --base bundled:smollm2-135m-instruct --max-tokens 24 --threads 2

Two LoRA versions with random weights (so answers run to the token budget) are registered on the
base model in a temporary MLflow store, as tasks/register.py does. The server is started on the
first (a subprocess, `--threads` torch threads), and the benchmark process loads the same merged
weights with the same thread count for the raw baseline; the two never run at the same time. For
concurrency 1 and 8, the same prompts (the demo's general holdout instructions) are answered
greedily: raw by `model.generate` called from that many threads at once (what the server does per
request), served through the official `openai` client (non-streaming). Reported: completion tokens
per second, p50/p95 request latency, and server/raw ratios.

Tracing overhead: two servers on the same version, one with `--set serve.tracing=false`, both
loaded before either is measured. They answer the same prompts in alternating rounds (off, on, off,
on, ...; `--rounds`), so load that changes during the run hits both alike; the on/off tok/s ratio is
the cost of tracing (issue 14: at most 10%). The traces written are counted to show tracing was on.
The "server" columns of the first table are the tracing server's. Then the second version is promoted and
the time until the server answers with it is measured (poll interval included). The CPU model and
flags and the load average are printed: other jobs share this machine. Prints a markdown section
for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.serving import free_port, wait_healthy  # noqa: E402
from machine import cpu  # noqa: E402


def random_lora(base_dir: str, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    return out


def register(tracking, base_dir: str, work: Path, seed: int) -> str:
    import mlflow

    from tunegate.chat_model import log_chat_model
    from tunegate.registry import connect, ensure_registered_model

    adapter = random_lora(base_dir, work / f"adapter-{seed}", seed)
    client, experiment_id = connect(tracking)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        logged = log_chat_model(str(adapter), "adapter", base_dir)
    ensure_registered_model(client, tracking.registered_model)
    return str(client.create_model_version(
        tracking.registered_model, source=logged["model_uri"], run_id=run.info.run_id, model_id=logged["model_id"],
        tags={"weights": "adapter", "merged": logged["merged_uri"], "gate": "passed"}).version)


def summarize(latencies: list[float], tokens: int, wall: float) -> dict:
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"tok_s": tokens / wall, "p50": statistics.median(latencies), "p95": q[18], "tokens": tokens}


def timed_round(fn, prompts: list[str], concurrency: int) -> tuple[list[float], int, float]:
    """Answer every prompt with `concurrency` at once; fn(prompt) -> completion tokens. (latencies, tokens, wall)."""
    def timed(prompt):
        start = time.perf_counter()
        n = fn(prompt)
        return time.perf_counter() - start, n

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(timed, prompts))
    return [r[0] for r in results], sum(r[1] for r in results), time.perf_counter() - start


def merge_rounds(rounds: list[tuple[list[float], int, float]]) -> dict:
    """(latencies, tokens, wall) of several rounds -> one summary over all of them."""
    return summarize([x for r in rounds for x in r[0]], sum(r[1] for r in rounds), sum(r[2] for r in rounds))


def run_concurrent(fn, prompts: list[str], concurrency: int) -> dict:
    return merge_rounds([timed_round(fn, prompts, concurrency)])


def raw_generate(merged_dir: str, max_tokens: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()

    def answer(prompt: str) -> int:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        return out.shape[1] - ids["input_ids"].shape[1]

    return answer


def start_server(tracking, work: Path, args, tracing: bool) -> tuple[subprocess.Popen, str]:
    """`tunegate serve-model` on the champion as a subprocess; returns it and its URL once it is healthy."""
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve-model", "--config", "configs/tiny.yaml",
           "--set", f"tracking.tracking_uri={tracking.tracking_uri}", "--set", f"tracking.artifact_root={work}/artifacts",
           "--set", "tracking.experiment=bench", "--set", "tracking.registered_model=bench-model",
           "--set", f"serve.tracing={str(tracing).lower()}",
           "--port", str(port), "--threads", str(args.threads), "--poll-seconds", str(args.poll_seconds)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, 300, server)
    return server, url


def answerer(client, max_tokens: int):
    def served(prompt: str) -> int:
        r = client.chat.completions.create(model="bench-model", max_tokens=max_tokens,
                                           messages=[{"role": "user", "content": prompt}])
        return r.usage.completion_tokens

    return served


def print_ratio_table(results: dict, baseline: tuple[str, str], measured: tuple[str, str], ratio: str | None = None):
    """A markdown table per concurrency level: tok/s of both, measured/baseline, and both latencies;
    baseline and measured are (results key, column label)."""
    (base_key, base), (key, name) = baseline, measured
    print(f"| concurrency | {base} tok/s | {name} tok/s | {ratio or f'{name}/{base}'} | {base} p50 / p95 s | "
          f"{name} p50 / p95 s |")
    print("|---|---|---|---|---|---|")
    for c in (1, 8):
        b, m = results[(base_key, c)], results[(key, c)]
        print(f"| {c} | {b['tok_s']:.1f} | {m['tok_s']:.1f} | {m['tok_s'] / b['tok_s']:.2f} | "
              f"{b['p50']:.2f} / {b['p95']:.2f} | {m['p50']:.2f} / {m['p95']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="tiny", help="tiny or bundled:smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, for the server and raw alike")
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating tracing off/on rounds per concurrency")
    parser.add_argument("--transformers-serve", action="store_true",
                        help="also measure `transformers serve` on the same merged weights")
    args = parser.parse_args()

    import mlflow
    import torch
    from openai import OpenAI

    from tasks.promote import promote_version
    from tunegate.config import TrackingConfig
    from tunegate.models import resolve_base_model
    from tunegate.registry import serving_experiment

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    base_dir = resolve_base_model(args.base)
    holdout = json.loads((ROOT / "data" / "demo" / "general_holdout.json").read_text())
    prompts = [row["instruction"] for row in holdout][: args.prompts]
    work = Path(tempfile.mkdtemp(prefix="serve-speed-"))  # removed at the end: merged copies are large
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{work}/mlflow.db", artifact_root=str(work / "artifacts"),
                              experiment="bench", registered_model="bench-model")
    v1, v2 = register(tracking, base_dir, work, 1), register(tracking, base_dir, work, 2)
    promote_version(tracking, v1)

    merged = mlflow.artifacts.download_artifacts(
        artifact_uri=mlflow.MlflowClient(tracking.tracking_uri).get_model_version("bench-model", v1).tags["merged"],
        dst_path=str(work / "raw"))
    raw = raw_generate(merged, args.max_tokens)
    raw(prompts[0])  # warm-up
    results = {("raw", c): run_concurrent(raw, prompts, c) for c in (1, 8)}
    del raw

    server, url = start_server(tracking, work, args, tracing=True)
    plain, plain_url = start_server(tracking, work, args, tracing=False)  # loaded now, idle until measured
    port = int(url.rsplit(":", 1)[1])
    try:
        client = OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=600)
        served, served_plain = answerer(client, args.max_tokens), answerer(
            OpenAI(base_url=f"{plain_url}/v1", api_key="-", max_retries=0, timeout=600), args.max_tokens)
        served(prompts[0])  # warm-up
        served_plain(prompts[0])
        for c in (1, 8):
            rounds = {True: [], False: []}
            for _ in range(args.rounds):  # off, on, off, on: a load change hits both alike
                rounds[False].append(timed_round(served_plain, prompts, c))
                rounds[True].append(timed_round(served, prompts, c))
            results[("server", c)] = merge_rounds(rounds[True])
            results[("no-tracing", c)] = merge_rounds(rounds[False])
        _, serving_id = serving_experiment(tracking)
        expected, deadline = 1 + 2 * args.rounds * len(prompts), time.monotonic() + 30
        while True:  # the server exports traces in the background: give the last ones a moment
            traces = len(mlflow.search_traces(locations=[serving_id], return_type="list", include_spans=False))
            if traces >= expected or time.monotonic() > deadline:
                break
            time.sleep(1)

        start = time.perf_counter()
        promote_version(tracking, v2, override=True, reason="benchmark: switch time")
        while client.models.list().data[0].model_extra["version"] != v2:
            time.sleep(0.05)
        switch = time.perf_counter() - start
    finally:
        for proc in (server, plain):
            proc.terminate()
            proc.wait(timeout=30)

    if args.transformers_serve:  # the alternative: `transformers serve` on the same merged weights
        tport = port + 1
        other = subprocess.Popen([str(Path(sys.executable).parent / "transformers"), "serve", merged, "--host",
                                  "127.0.0.1", "--port", str(tport), "--device", "cpu"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        try:
            wait_healthy(f"http://127.0.0.1:{tport}", 300)
            tclient = OpenAI(base_url=f"http://127.0.0.1:{tport}/v1", api_key="-", max_retries=0, timeout=600)

            def transformers_served(prompt: str) -> int:
                r = tclient.chat.completions.create(model=merged, max_tokens=args.max_tokens,
                                                    messages=[{"role": "user", "content": prompt}])
                return r.usage.completion_tokens

            transformers_served(prompts[0])
            results |= {("transformers", c): run_concurrent(transformers_served, prompts, c) for c in (1, 8)}
        finally:
            other.terminate()
            other.wait(timeout=30)
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n### `python bench/serve_speed.py --base {args.base} --max-tokens {args.max_tokens} "
          f"--prompts {args.prompts} --threads {args.threads} --rounds {args.rounds}"
          f"{' --transformers-serve' * args.transformers_serve}`\n")
    print(f"CPU: {cpu()}; load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}; torch threads {args.threads}\n")
    print_ratio_table(results, ("raw", "raw"), ("server", "server"))
    print(f"\nTracing on (default) against `--set serve.tracing=false`: {args.rounds} alternating rounds of "
          f"{len(prompts)} requests per level; traces written by the tracing server: {traces} "
          f"(expected {expected}), none by the other.\n")
    print_ratio_table(results, ("no-tracing", "tracing off"), ("server", "tracing on"), ratio="on/off")
    if args.transformers_serve:
        print("\n| concurrency | `transformers serve` tok/s | its /raw | p50 / p95 s |")
        print("|---|---|---|---|")
        for c in (1, 8):
            r, t = results[("raw", c)], results[("transformers", c)]
            print(f"| {c} | {t['tok_s']:.1f} | {t['tok_s'] / r['tok_s']:.2f} | {t['p50']:.2f} / {t['p95']:.2f} |")
    print(f"\nSwitch on promotion (alias moved -> first answer from the new version): {switch:.2f} s, "
          f"poll interval {args.poll_seconds} s included.")


if __name__ == "__main__":
    main()
