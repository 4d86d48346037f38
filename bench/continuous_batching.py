"""Continuous batching driven like a server, against `generate`: same 8 prompts, greedy, in this process.

    python bench/continuous_batching.py --base bundled:smollm2-135m-instruct --threads 2

Four ways, each answer greedy with the model's own EOS (so every way does the same useful work):
sequential `model.generate` (one request at a time), one left-padded `generate` over all 8, and
transformers' ContinuousBatchingManager (`model.init_continuous_batching`) fed by 8 client threads,
once all at once and once arriving `--gap` seconds apart (requests join while others decode), and
once one request at a time through it (its cost at concurrency 1), in alternating rounds (`--rounds`) so
that a change in the machine's load hits every way alike. Reports tok/s, the ratio to
sequential, p50/p95 latency, and whether every answer equals the sequential greedy answer token for
token. Prints a markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from machine import cpu  # noqa: E402


def sequential(model, prompts, max_new):
    import torch

    answers, latencies = [], []
    for ids in prompts:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)
        latencies.append(time.perf_counter() - start)
        answers.append(out[0, len(ids):].tolist())
    return answers, latencies


def padded(model, tok, prompts, max_new):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    took = time.perf_counter() - start
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    answers = []
    for row in out[:, width:].tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        answers.append(row[:end])
    return answers, [took] * len(prompts)


class Router:
    """One thread that hands each result of the manager's shared output queue to its request's own queue."""

    def __init__(self, manager):
        self.manager, self.queues, self.lock = manager, {}, threading.Lock()
        threading.Thread(target=self.run, daemon=True).start()

    def add(self, ids, max_new):
        rid = f"r{time.perf_counter_ns()}"
        with self.lock:
            inbox = self.queues[rid] = queue.Queue()
        self.manager.add_request(ids, request_id=rid, max_new_tokens=max_new)
        return inbox

    def run(self):
        while self.manager.is_running():
            out = self.manager.get_result(timeout=0.1)
            if out is not None:
                with self.lock:
                    self.queues[out.request_id].put(out)


def through_manager(router, prompts, max_new, gap: float | None):
    """Each prompt from its own thread (gap None: one after another, waiting for each answer)."""
    answers, latencies = [None] * len(prompts), [0.0] * len(prompts)

    def one(i):
        start = time.perf_counter()
        out = router.add(prompts[i], max_new).get()
        latencies[i], answers[i] = time.perf_counter() - start, out.generated_tokens

    if gap is None:
        for i in range(len(prompts)):
            one(i)
        return answers, latencies
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join()
    return answers, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.15, help="seconds between arrivals in the staggered run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all the ways")
    parser.add_argument("--num-blocks", type=int, default=16, help="paged KV cache blocks (256 tokens each)")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from tunegate.models import resolve_base_model

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    folder = resolve_base_model(args.base)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    holdout = json.loads((ROOT / "data" / "demo" / "general_holdout.json").read_text())
    prompts = [tok.apply_chat_template([{"role": "user", "content": r["instruction"]}], add_generation_prompt=True,
                                       return_dict=True)["input_ids"] for r in holdout[:8]]
    sequential(model, prompts[:1], 4)  # warm-up

    rows = []
    for max_new in (32, 16):
        manager = model.init_continuous_batching(
            generation_config=GenerationConfig(do_sample=False, max_new_tokens=max_new,
                                               eos_token_id=model.generation_config.eos_token_id),
            continuous_batching_config=ContinuousBatchingConfig(num_blocks=args.num_blocks, max_batch_tokens=512))
        manager.start()
        router = Router(manager)
        through_manager(router, prompts[:1], 4, None)  # warm-up: the cache is allocated on the first batch
        reference = sequential(model, prompts, max_new)[0]
        ways = {"sequential generate": lambda: sequential(model, prompts, max_new),
                "one padded generate": lambda: padded(model, tok, prompts, max_new),
                "manager, 8 at once": lambda: through_manager(router, prompts, max_new, 0.0),
                f"manager, arriving {args.gap} s apart": lambda: through_manager(router, prompts, max_new, args.gap),
                "manager, one at a time": lambda: through_manager(router, prompts, max_new, None)}
        done = {name: [0, 0.0, [], True] for name in ways}  # tokens, wall, latencies, all equal to sequential
        for _ in range(args.rounds):  # each way in turn, round after round: a load change hits all alike
            for name, way in ways.items():
                start = time.perf_counter()
                answers, lat = way()
                done[name][0] += sum(len(a) for a in answers)
                done[name][1] += time.perf_counter() - start
                done[name][2] += lat
                done[name][3] &= answers == reference
        manager.stop(block=True, timeout=30)
        rows += [(max_new, name, tokens / wall, lat, same) for name, (tokens, wall, lat, same) in done.items()]

    print(f"\n### `python bench/continuous_batching.py --base {args.base} --threads {args.threads} --gap {args.gap} "
          f"--rounds {args.rounds} --num-blocks {args.num_blocks}`\n")
    print(f"CPU: {cpu()}; load average at start {load_before:.2f}, at end {os.getloadavg()[0]:.2f}; "
          f"torch threads {args.threads}; transformers {__import__('transformers').__version__}\n")
    print("| new tokens | way | tok/s | /sequential | p50 / p95 s | = sequential greedy |\n|---|---|---|---|---|---|")
    for max_new, name, rate, lat, same in rows:
        base = next(r[2] for r in rows if r[0] == max_new and r[1] == "sequential generate")
        q = statistics.quantiles(lat, n=20, method="inclusive")[18]
        print(f"| {max_new} | {name} | {rate:.1f} | {rate / base:.2f} | {statistics.median(lat):.2f} / {q:.2f} | "
              f"{'yes' if same else 'no'} |")


if __name__ == "__main__":
    main()
