"""Evaluation speed on the demo suite: one model cold, then the cache hits that replace re-evaluation.

    python bench/eval_speed.py          # SmolLM2-135M-Instruct, configs/demo.yaml; ~3 min on 2 CPU cores

The demo data is prepared for the bundled SmolLM2-135M-Instruct and its eval suite is built as the
flow builds it (configs/demo.yaml: 12 domain generations of up to 40 tokens, 60 general
log-likelihoods). Each model is scored through `evaluate_suite`, as in the flow: lm-eval, one MLflow
eval run per task, results persisted in Prefect's cache, inside a Prefect flow on a temporary
server (its start-up is not counted). Models: the base model, and a LoRA adapter of the demo's
shape (r=16, all linear layers) with random weights, whose answers usually run to the full token
budget (a slow case). Each is then asked for again: a cache hit. The last hit is timed with the
file-hash memo removed, so the 540 MB base weights are hashed again (the first hit in a new cache).
Prints a markdown section for docs/benchmarks.md.
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


def main(work: Path) -> list[tuple[str, float, float, list[str]]]:
    from prefect import flow

    params = load_config(ROOT / "configs/demo.yaml")
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{work}/mlflow.db", artifact_root=str(work / "artifacts"))
    prepared = prepare_once(params, work / "data")
    suite = eval_suite(prepared, params.eval, params.gate.rules, work / "eval-cache", work / "suite")
    adapter = random_lora(prepared["base_model_path"], work / "lora", params.sft.lora_r)
    models = [{"label": "base", "adapter": None, "version": None},
              {"label": "lora r16", "adapter": adapter, "version": None}]
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
    from prefect.testing.utilities import prefect_test_harness

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="eval-speed-") as tmp, prefect_test_harness(server_startup_timeout=120):
        timings = main(Path(tmp))
    print("## Evaluation speed\n")
    print(f"1-min load average of the 2-core machine: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          "(other processes share these cores).\n")
    print("| model, call | seconds | of which inside lm-eval | tasks from cache |\n|---|---|---|---|")
    for what, seconds, lm_eval_s, hits in timings:
        print(f"| {what} | {seconds:.2f} | {lm_eval_s:.1f} | {', '.join(hits) or '-'} |")
