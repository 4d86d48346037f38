"""Stage 6, evaluate: lm-evaluation-harness on the local tasks in evals/, for one model.

    python -m tasks.evaluate MODEL_DIR RUN_DIR [ADAPTER_DIR]   # RUN_DIR holds prepare's files

The candidate, the champion and the base model are all scored by `evaluate_model` with the
same task files, seeds and batch size. Adapters load through lm-eval's `peft=` argument,
unmerged, so the weights on disk are exactly what is evaluated.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from prefect import task

from tunegate.config import TrackingConfig
from tunegate.registry import CHAMPION, connect, download_version, get_alias

EVALS_DIR = Path(__file__).resolve().parent.parent / "evals"
SEED = 1234


def materialize_tasks(prepared: dict, max_gen_toks: int, task_names: list[str], out_dir: Path) -> Path:
    """Copy the task templates with absolute data paths filled in; return the include dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data_files = {"domain": prepared["domain_eval"], "general": prepared["general_eval"]}
    for name in task_names:
        template = (EVALS_DIR / f"tunegate_{name}.yaml").read_text()
        filled = (
            template.replace("__DATA_FILE__", str(Path(data_files[name]).resolve()))
            .replace("__STOP__", prepared["stop"])
            .replace("__MAX_GEN_TOKS__", str(max_gen_toks))
        )
        (out_dir / f"tunegate_{name}.yaml").write_text(filled)
    shutil.copy(EVALS_DIR / "tunegate_metrics.py", out_dir / "tunegate_metrics.py")
    return out_dir


def evaluate_model(
    label: str,
    base_model_path: str,
    adapter_path: str | None,
    tasks_dir: Path,
    task_names: list[str],
    batch_size: int,
    out_dir: Path,
    trust_remote_code: bool = False,
) -> dict:
    """Run lm-eval; return aggregate metrics per task plus per-sample values for paired tests."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_args = {"pretrained": base_model_path, "device": device, "dtype": "float32" if device == "cpu" else "auto"}
    if adapter_path:
        model_args["peft"] = adapter_path
    if trust_remote_code:
        model_args["trust_remote_code"] = True
    lm_tasks = [f"tunegate_{t}" for t in task_names]
    start = time.perf_counter()
    results = simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=lm_tasks,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        batch_size=batch_size,
        log_samples=True,
        random_seed=SEED,
        numpy_random_seed=SEED,
        torch_random_seed=SEED,
        fewshot_random_seed=SEED,
    )
    seconds = time.perf_counter() - start
    summary = {"label": label, "adapter": adapter_path, "seconds": round(seconds, 1), "tasks": {}}
    for name in lm_tasks:
        agg = results["results"][name]
        metrics = {k.split(",")[0]: float(v) for k, v in agg.items() if "," in k and "_stderr" not in k}
        per_sample = {m: [float(s[m]) for s in results["samples"][name]] for m in metrics}
        summary["tasks"][name] = {"metrics": metrics, "samples": per_sample, "n": len(results["samples"][name])}
    summary["lm_eval_version"] = results.get("versions", {})
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"eval_{label.replace(' ', '-')}.json").write_text(json.dumps(summary, indent=2))
    return summary


@task(retries=2, retry_delay_seconds=[2, 5])
def resolve_baseline(tracking: TrackingConfig, out_dir: str) -> dict:
    """What the candidate is compared with: the champion's adapter, or the base model when none exists."""
    client, _ = connect(tracking)
    version = get_alias(client, tracking.registered_model, CHAMPION)
    if version is None:
        return {"label": "base", "adapter": None, "version": None}
    adapter = download_version(client, version, Path(out_dir) / f"champion-v{version.version}")
    return {"label": f"champion v{version.version}", "adapter": adapter, "version": str(version.version)}


@task
def evaluate(
    label: str,
    prepared: dict,
    adapter_path: str | None,
    task_names: list[str],
    max_gen_toks: int,
    batch_size: int,
    out_dir: str,
    trust_remote_code: bool = False,
) -> dict:
    """Score one model (base, champion or candidate) on the eval tasks."""
    tasks_dir = materialize_tasks(prepared, max_gen_toks, task_names, Path(out_dir) / "lm_eval_tasks")
    return evaluate_model(
        label, prepared["base_model_path"], adapter_path, tasks_dir, task_names, batch_size, Path(out_dir),
        trust_remote_code,
    )


if __name__ == "__main__":
    run_dir = Path(sys.argv[2])
    prepared = {
        "domain_eval": str(run_dir / "domain_eval.jsonl"),
        "general_eval": str(run_dir / "general_eval.jsonl"),
        "stop": "<|im_end|>",
        "base_model_path": sys.argv[1],
    }
    tasks_dir = materialize_tasks(prepared, 48, ["domain", "general"], run_dir / "lm_eval_tasks")
    out = evaluate_model("cli", sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else None, tasks_dir,
                         ["domain", "general"], 8, run_dir)
    print(json.dumps({t: v["metrics"] for t, v in out["tasks"].items()}, indent=2), f"{out['seconds']} s")
