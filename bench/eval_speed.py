"""Evaluation speed on the demo suite: one model cold, then the cache hits that replace re-evaluation.

    python bench/eval_speed.py --threads 1 2   # SmolLM2-135M-Instruct, configs/demo.yaml; minutes on 2 cores

The demo data is prepared for the bundled SmolLM2-135M-Instruct and its eval suite is built as the
flow builds it (configs/demo.yaml: 12 domain generations of up to 40 tokens, 60 general
log-likelihoods). Each model is scored through `evaluate_suite`, as in the flow: lm-eval, one MLflow
eval run per task, results persisted in Prefect's cache, inside a Prefect flow on a temporary
server (its start-up is not counted). Models: the base model, and a LoRA adapter of the demo's
shape (r=16, all linear layers) with random weights, whose answers usually run to the full token
budget (a slow case). Each is then asked for again: a cache hit. The last hit is timed with the
file-hash memo removed, so the 540 MB base weights are hashed again (the first hit in a new cache).
All of it once per `--threads` value (eval.cpu_threads; each is its own cache footing). The load
average is printed: other jobs share these 2 cores. Prints a markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gate_false_blocks import prepare_once  # noqa: E402

from tasks.evaluate import eval_suite, evaluate_suite  # noqa: E402
from tunegate.config import TrackingConfig, load_config  # noqa: E402


def random_lora(base_model_path: str, out: Path, r: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_model_path)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return str(out)


def main(work: Path, threads: int) -> list[tuple[str, float, float, list[str]]]:
    from prefect import flow

    params = load_config(ROOT / "configs/demo.yaml")
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{work}/mlflow.db", artifact_root=str(work / "artifacts"))
    prepared = prepare_once(params, work / "data")
    cfg = params.eval.model_copy(update={"cpu_threads": threads})
    suite = eval_suite(prepared, cfg, params.gate.rules, work / "eval-cache", work / "suite")
    adapter = random_lora(prepared["base_model_path"], work / "lora", params.sft.lora_r)
    models = [{"label": "base", "adapter": None, "model": None, "version": None},
              {"label": "lora r16", "adapter": adapter, "model": None, "version": None}]
    timings = []

    @flow(name="eval-speed")
    def timed():
        for what, model in [("cold", models[0]), ("cold", models[1]), ("cache hit", models[0]), ("cache hit", models[1])]:
            start = time.perf_counter()
            out = evaluate_suite(model, suite, tracking)
            lm_eval_s = sum(t["seconds"] for name, t in out["tasks"].items() if name not in out["cache_hits"])
            timings.append((f"{model['label']}, {what}", time.perf_counter() - start, lm_eval_s, out["cache_hits"]))
        (work / "eval-cache" / "file-hashes.json").unlink()
        start = time.perf_counter()
        out = evaluate_suite(models[1], suite, tracking)
        timings.append(("lora r16, cache hit, base weights re-hashed", time.perf_counter() - start, 0.0,
                        out["cache_hits"]))

    timed()
    return timings


if __name__ == "__main__":
    import argparse

    from prefect.testing.utilities import prefect_test_harness

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="eval.cpu_threads values to time")
    args = parser.parse_args()
    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        for threads in args.threads:
            load_before = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp:
                timings = main(Path(tmp), threads)
            load = f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"
            rows += [(threads, load, *t) for t in timings]
    print("## Evaluation speed\n")
    print("| cpu_threads | load avg | model, call | seconds | of which in lm-eval | tasks from cache |")
    print("|---|---|---|---|---|---|")
    for threads, load, what, seconds, lm_eval_s, hits in rows:
        print(f"| {threads} | {load} | {what} | {seconds:.2f} | {lm_eval_s:.1f} | {', '.join(hits) or '-'} |")
