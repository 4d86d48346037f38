"""Serving speed: `tunegate serve-model` against raw `model.generate`, and tracing on against off, in one run.

    python bench/serve_speed.py --base tiny --max-tokens 32 --threads 2
    python bench/serve_speed.py --base bundled:smollm2-135m-instruct --max-tokens 24 --threads 2
    python bench/serve_speed.py --base bundled:smollm2-135m-instruct --max-tokens 16 --prompts 8 --concurrency-only

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
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli.serving import free_port, serve_model_process, stop_process, wait_healthy  # noqa: E402
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


def alternating_rounds(served: dict, prompts: list[str], n_rounds: int) -> dict:
    """{(kind, concurrency): merged result} at concurrency 1 and 8; each kind in turn, round after round, so a load
    change hits all alike."""
    results = {}
    for c in (1, 8):
        rounds = {k: [] for k in served}
        for _ in range(n_rounds):
            for k in served:
                rounds[k].append(timed_round(served[k], prompts, c))
        results |= {(k, c): merge_rounds(r) for k, r in rounds.items()}
    return results


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


def server_args(tracking, work: Path, args, *sets: str) -> list[str]:
    """`tunegate serve-model` arguments for the benchmark's store, with extra `--set` overrides."""
    out = ["--config", "configs/tiny.yaml", "--set", f"tracking.tracking_uri={tracking.tracking_uri}",
           "--set", f"tracking.artifact_root={work}/artifacts", "--set", "tracking.experiment=bench",
           "--set", "tracking.registered_model=bench-model", "--threads", str(args.threads),
           "--poll-seconds", str(args.poll_seconds)]
    return out + [a for s in sets for a in ("--set", s)]


def mechanisms(merged_dir: str, prompts: list[str], max_tokens: int) -> dict:
    """tok/s of the same prompts decoded three ways in this process: one `generate` per prompt, one left-padded
    `generate` over all of them, and transformers' continuous batching (`generate_batch`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    tok = AutoTokenizer.from_pretrained(merged_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    chats = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    greedy = {"max_new_tokens": max_tokens, "do_sample": False, "pad_token_id": tok.pad_token_id,
              "eos_token_id": None}  # every answer runs to the budget: the same work for each way
    out = {}
    with torch.no_grad():
        start, tokens = time.perf_counter(), 0
        for chat in chats:
            ids = tok(chat, return_tensors="pt")
            tokens += model.generate(**ids, **greedy).shape[1] - ids["input_ids"].shape[1]
        out["sequential generate"] = tokens / (time.perf_counter() - start)
        batch = tok(chats, return_tensors="pt", padding=True)
        start = time.perf_counter()
        tokens = (model.generate(**batch, **greedy).shape[1] - batch["input_ids"].shape[1]) * len(chats)
        out["one padded generate"] = tokens / (time.perf_counter() - start)
        try:
            start = time.perf_counter()
            # Its paged cache would take up to 90% of free RAM by default: sized for these prompts instead.
            results = model.generate_batch([tok(c)["input_ids"] for c in chats], generation_config=GenerationConfig(
                max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id),
                continuous_batching_config=ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=512))
            out["continuous batching (generate_batch)"] = sum(
                len(r.generated_tokens) for r in results.values()) / (time.perf_counter() - start)
        except Exception as err:  # what it says on this machine is the finding
            out["continuous batching (generate_batch)"] = f"failed: {type(err).__name__}: {str(err)[:120]}"
    return out


def answerer(client, max_tokens: int, ids: list | None = None):
    def served(prompt: str) -> int:
        r = client.chat.completions.create(model="bench-model", max_tokens=max_tokens,
                                           messages=[{"role": "user", "content": prompt}])
        if ids is not None:
            ids.append(r.id)
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


def percentiles(latencies: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return statistics.median(latencies), q[18]


def rate_concurrently(url: str, request_ids: list[str], raters: int) -> list[float]:
    """Each request rated once, by `raters` users at once; the latency of every POST /v1/feedback."""
    from serve.client import send_feedback

    def rate(i: int) -> float:
        start = time.perf_counter()
        send_feedback(url, request_ids[i], user=f"rater-{i % raters}", rating="up" if i % 3 else "down")
        return time.perf_counter() - start

    with ThreadPoolExecutor(raters) as pool:
        return list(pool.map(rate, range(len(request_ids))))


def read_window(tracking, mark: Path) -> list[str]:
    """The feedback record ids the next retrain reads from the traces (tasks/feedback.py, from the watermark on),
    then the watermark moved past them, as a run that reached its gate decision does."""
    from tasks.feedback import read_trace_feedback, read_watermark, write_watermark

    _, lines_done = read_watermark(mark)
    window = read_trace_feedback(tracking, 1, lines_done)
    if window["records"]:
        write_watermark(mark, window["end"].isoformat(), window["lines_read"], "bench", "promoted")
    return [r["id"] for r in window["records"]]


def load_run(url: str, tracking, work: Path, n: int, concurrency: int, max_tokens: int) -> dict:
    """n chat requests and n ratings (each answer rated once) at `concurrency`; the feedback read in two windows,
    one taken halfway while ratings still arrive. Counts errors and how often each rating was read."""
    import queue
    import threading

    from openai import OpenAI

    from serve.client import send_feedback, wait_for_feedback

    client = OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=600)
    answered, errors, rated = queue.Queue(), [], []
    halfway, mark = threading.Event(), work / "load-watermark.json"

    def chat(i: int) -> None:
        r = client.chat.completions.create(model="bench-model", max_tokens=max_tokens,
                                           messages=[{"role": "user", "content": f"Question {i}: name a colour."}])
        answered.put(r.id)

    def rate(i: int) -> None:
        send_feedback(url, answered.get(timeout=900), user=f"user-{i % 50}", rating="up" if i % 2 else "down")
        rated.append(i)
        if len(rated) == n // 2:
            halfway.set()

    def run(task: tuple) -> None:
        try:
            (chat if task[0] == "chat" else rate)(task[1])
        except Exception as err:  # counted, with its kind; the run goes on
            errors.append(f"{task[0]}: {type(err).__name__}: {str(err)[:200]}")

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = pool.map(run, [t for i in range(n) for t in (("chat", i), ("rate", i))])
        halfway.wait(timeout=3600)
        first = read_window(tracking, mark)  # while the second half is being rated
        list(done)
    wall = time.perf_counter() - start
    wait_for_feedback(url)  # accepted ratings are written in the background
    second = read_window(tracking, mark)
    third = read_window(tracking, mark)  # nothing new: what was read is never read again
    ids = first + second + third
    return {"requests": n, "ratings_sent": len(rated), "errors": errors, "wall": wall, "read_first": len(first),
            "read_second": len(second), "read_again": len(third), "read_total": len(ids),
            "read_distinct": len(set(ids))}


def gateway_overhead(tracking, work: Path, args, prompts: list[str], results: dict) -> None:
    """The champion through `serve-model` as a gateway (serve.engine=openai, load by path) in front of `transformers
    serve`, against the same engine asked directly: same model files, same prompts, alternating rounds."""
    from openai import OpenAI

    tport = free_port()
    engine = subprocess.Popen([str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1",
                               "--port", str(tport), "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    engine_url = f"http://127.0.0.1:{tport}/v1"
    sets = ["serve.engine=openai", f"serve.engine_url={engine_url}", "serve.engine_load=path",
            f"serve.engine_dir={work}/engine"]
    try:
        wait_healthy(f"http://127.0.0.1:{tport}", 300, engine)
        with serve_model_process(server_args(tracking, work, args, *sets), work / "gateway.log", 600) as url:
            version = OpenAI(base_url=f"{url}/v1", api_key="-").models.list().data[0].model_extra["version"]
            path = str(next((work / "engine").glob(f"bench-model-v{version}/merged")))
            direct = OpenAI(base_url=engine_url, api_key="-", max_retries=0, timeout=600)

            def engine_served(prompt: str) -> int:
                r = direct.chat.completions.create(model=path, max_tokens=args.max_tokens, temperature=0,
                                                   messages=[{"role": "user", "content": prompt}])
                return r.usage.completion_tokens

            served = {"engine": engine_served, "gateway": answerer(OpenAI(base_url=f"{url}/v1", api_key="-",
                                                                          max_retries=0, timeout=600),
                                                                   args.max_tokens)}
            for fn in served.values():
                fn(prompts[0])
            results |= alternating_rounds(served, prompts, args.rounds)
    finally:
        stop_process(engine)


def concurrency_only(tracking, work: Path, args, prompts: list[str]) -> None:
    """Concurrency 1 against 8 only: the default server (continuous batching for these greedy requests), the padded
    batches alone (serve.continuous_batching=false) and one request at a time, alternating rounds; prints the
    served line and the tables of the full run."""
    from openai import OpenAI

    load_before = os.getloadavg()[0]
    kinds = {"server": [], "padded": ["serve.continuous_batching=false"], "one-at-a-time": ["serve.max_batch_size=1"]}
    results = {}
    with ExitStack() as stack:
        urls = {k: stack.enter_context(serve_model_process(server_args(tracking, work, args, *sets),
                                                           work / f"{k}.log", 300)) for k, sets in kinds.items()}
        served = {k: answerer(OpenAI(base_url=f"{u}/v1", api_key="-", max_retries=0, timeout=600), args.max_tokens)
                  for k, u in urls.items()}
        for fn in served.values():
            fn(prompts[0])  # warm-up
        results |= alternating_rounds(served, prompts, args.rounds)
    print(f"\n### `python bench/serve_speed.py --base {args.base} --max-tokens {args.max_tokens} --prompts "
          f"{args.prompts} --threads {args.threads} --rounds {args.rounds} --concurrency-only`\n")
    print(f"CPU: {cpu()}; load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}; "
          f"torch threads {args.threads}\n")
    for key, name in (("server", "continuous batching (default)"), ("padded", "padded batches only")):
        c1, c8 = results[(key, 1)], results[(key, 8)]
        print(f"Served ({name}, tracing on): concurrency 8 at {c8['tok_s'] / c1['tok_s']:.2f}x the tok/s of "
              f"concurrency 1 ({c8['tok_s']:.1f} vs {c1['tok_s']:.1f}).\n")
    print_ratio_table(results, ("one-at-a-time", "one at a time"), ("server", "batched"))
    print()
    print_ratio_table(results, ("padded", "padded batches"), ("server", "continuous batching"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="tiny", help="tiny or bundled:smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16, help="requests per concurrency level and round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, for the servers and raw alike")
    parser.add_argument("--poll-seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per concurrency level")
    parser.add_argument("--raters", type=int, default=16, help="concurrent users rating answers")
    parser.add_argument("--load", type=int, default=0, help="then N chat requests and N ratings at concurrency 16")
    parser.add_argument("--transformers-serve", action="store_true",
                        help="also measure `transformers serve` on the same merged weights")
    parser.add_argument("--gateway", action="store_true",
                        help="also measure serve-model as a gateway in front of `transformers serve`, against it direct")
    parser.add_argument("--concurrency-only", action="store_true",
                        help="only concurrency 1 against 8: continuous batching, padded batches, one at a time")
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
    v1 = register(tracking, base_dir, work, 1)
    promote_version(tracking, v1)
    if args.concurrency_only:
        concurrency_only(tracking, work, args, prompts)
        shutil.rmtree(work, ignore_errors=True)
        return
    v2 = register(tracking, base_dir, work, 2)

    merged = mlflow.artifacts.download_artifacts(
        artifact_uri=mlflow.MlflowClient(tracking.tracking_uri).get_model_version("bench-model", v1).tags["merged"],
        dst_path=str(work / "raw"))
    ways = mechanisms(merged, prompts[:8], args.max_tokens)
    raw = raw_generate(merged, args.max_tokens)
    raw(prompts[0])  # warm-up
    results = {("raw", c): run_concurrent(raw, prompts, c) for c in (1, 8)}
    del raw

    # Three servers on the same version, all loaded before any is measured: batched with tracing (the default),
    # batched without tracing, and one request at a time (serve.max_batch_size=1) with tracing.
    kinds = {"server": ["serve.tracing=true"], "no-tracing": ["serve.tracing=false"],
             "one-at-a-time": ["serve.tracing=true", "serve.max_batch_size=1"]}
    ids: list[str] = []
    with ExitStack() as stack:
        urls = {k: stack.enter_context(serve_model_process(server_args(tracking, work, args, *sets),
                                                           work / f"{k}.log", 300)) for k, sets in kinds.items()}
        clients = {k: OpenAI(base_url=f"{u}/v1", api_key="-", max_retries=0, timeout=600) for k, u in urls.items()}
        served = {k: answerer(c, args.max_tokens, ids if k == "server" else None) for k, c in clients.items()}
        for fn in served.values():
            fn(prompts[0])  # warm-up
        results |= alternating_rounds(served, prompts, args.rounds)
        _, serving_id = serving_experiment(tracking)
        expected, deadline = 2 * (1 + 2 * args.rounds * len(prompts)), time.monotonic() + 60
        while True:  # the servers export traces in the background: give the last ones a moment
            traces = len(mlflow.search_traces(locations=[serving_id], return_type="list", include_spans=False))
            if traces >= expected or time.monotonic() > deadline:
                break
            time.sleep(1)
        feedback = rate_concurrently(urls["server"], ids, args.raters)
        load = load_run(urls["server"], tracking, work, args.load, 16, args.max_tokens) if args.load else None

        start = time.perf_counter()
        promote_version(tracking, v2, override=True, reason="benchmark: switch time")
        while clients["server"].models.list().data[0].model_extra["version"] != v2:
            time.sleep(0.05)
        switch = time.perf_counter() - start

    if args.transformers_serve:  # the alternative: `transformers serve` on the same merged weights
        tport = free_port()
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
    if args.gateway:
        gateway_overhead(tracking, work, args, prompts, results)
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n### `python bench/serve_speed.py --base {args.base} --max-tokens {args.max_tokens} "
          f"--prompts {args.prompts} --threads {args.threads} --rounds {args.rounds}"
          f"{f' --load {args.load}' if args.load else ''}{' --transformers-serve' * args.transformers_serve}"
          f"{' --gateway' * args.gateway}`\n")
    print(f"CPU: {cpu()}; load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}; "
          f"torch threads {args.threads}\n")
    print("Decoding the same 8 prompts in this process, each answer run to the token budget:\n")
    print("| way | tok/s | /sequential |\n|---|---|---|")
    for way, rate in ways.items():
        ratio = f"{rate / ways['sequential generate']:.2f}" if isinstance(rate, float) else "-"
        print(f"| {way} | {f'{rate:.1f}' if isinstance(rate, float) else rate} | {ratio} |")
    c1, c8 = results[("server", 1)], results[("server", 8)]
    print(f"\nServed (batched, tracing on): concurrency 8 at {c8['tok_s'] / c1['tok_s']:.2f}x the tok/s of "
          f"concurrency 1 ({c8['tok_s']:.1f} vs {c1['tok_s']:.1f}).\n")
    print_ratio_table(results, ("one-at-a-time", "one at a time"), ("server", "batched"))
    print()
    print_ratio_table(results, ("raw", "raw generate"), ("server", "batched server"))
    print(f"\nTracing on (default) against `--set serve.tracing=false`, both batched: {args.rounds} rounds of "
          f"{len(prompts)} requests per level; traces written: {traces} (expected {expected}).\n")
    print_ratio_table(results, ("no-tracing", "tracing off"), ("server", "tracing on"), ratio="on/off")
    p50, p95 = percentiles(feedback)
    print(f"\nFeedback: {len(feedback)} ratings of distinct answers by {args.raters} concurrent raters: "
          f"POST /v1/feedback p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {max(feedback) * 1000:.0f} ms.")
    if load:
        print(f"\nLoad run: {load['requests']} chat requests and {load['ratings_sent']} ratings at concurrency 16 in "
              f"{load['wall']:.0f} s; errors: {len(load['errors'])}"
              + (f" (first: {load['errors'][0]})" if load["errors"] else "") + ". Read by the retrain's feedback "
              f"reader in two windows (the first taken halfway, while ratings still arrived): {load['read_first']} "
              f"+ {load['read_second']} = {load['read_total']} records, {load['read_distinct']} distinct; read "
              f"again afterwards: {load['read_again']}.")
    if args.transformers_serve:
        print("\n| concurrency | `transformers serve` tok/s | its /raw | p50 / p95 s |")
        print("|---|---|---|---|")
        for c in (1, 8):
            r, t = results[("raw", c)], results[("transformers", c)]
            print(f"| {c} | {t['tok_s']:.1f} | {t['tok_s'] / r['tok_s']:.2f} | {t['p50']:.2f} / {t['p95']:.2f} |")
    if args.gateway:
        print("\nThe gateway (serve.engine=openai: validation, tracing, alias-following) in front of `transformers "
              "serve`, against the same engine asked directly, same model files, alternating rounds:\n")
        print_ratio_table(results, ("engine", "engine direct"), ("gateway", "through the gateway"))
    print(f"\nSwitch on promotion (alias moved -> first answer from the new version): {switch:.2f} s, "
          f"poll interval {args.poll_seconds} s included.")


if __name__ == "__main__":
    main()
