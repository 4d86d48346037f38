"""Stage 7, register: one MLflow run with params, metrics and artifacts; the weights as a model version.

The weights are the adapter (LoRA, DoRA, QLoRA), or the whole model for `sft.method: full`; the
version's `weights` tag says which, and so does peft's adapter_config.json in the run's `adapter/`
or `model/` folder. The version's source is an MLflow Model with a chat task (tunegate/chat_model.py):
`mlflow.pyfunc.load_model("models:/NAME@champion").predict({"messages": [...]})` answers. The run's
`merged/` (tag `merged`) is the standalone safetensors model that serve/ loads.

Metric names are the same in every run (`eval/<task>/<metric>` for the candidate,
`baseline/<task>/<metric>` for what it was compared with), so MLflow's compare view lines them up.
Only counts and file:line references of the data reach this run, never row content (the eval
runs in `<experiment>-evals` hold lm-eval's per-sample logs of the validated eval rows).

Lineage, as tags on the run (`lineage.*`) and on the model version: data hash, validation outcome
and quarantine counts (the full report is the run's data/validation_report.json), the full config,
code version, base model, the candidate's content hash and the MLflow run ids of every evaluation
the gate used (cached ones point at the run that computed them).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

from prefect import task

from tunegate.chat_model import log_chat_model
from tunegate.config import PipelineParams
from tunegate.models import resolve_base_model
from tunegate.registry import connect, ensure_registered_model


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def code_version() -> str:
    """The git commit of the code that ran, with '+dirty' when it had local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def eval_metrics(prefix: str, evaluation: dict) -> dict[str, float]:
    return {
        f"{prefix}/{task_name}/{metric}": value
        for task_name, result in evaluation["tasks"].items()
        for metric, value in result["metrics"].items()
    }


def log_training_curves(trained: dict, aligned: dict) -> None:
    """Per-step SFT train/eval loss and DPO loss/margin as MLflow metrics, plus the loss plot."""
    import mlflow

    for step, loss in trained["loss_curve"]:
        mlflow.log_metric("train/loss_step", loss, step=step)
    for step, loss in trained["eval_loss_curve"]:
        mlflow.log_metric("train/eval_loss_step", loss, step=step)
    mlflow.log_artifact(trained["loss_plot"], artifact_path="train")
    if not aligned["skipped"]:
        for step, loss in aligned["loss_curve"]:
            mlflow.log_metric("dpo/loss_step", loss, step=step)
        for step, margin in aligned["margin_curve"]:
            mlflow.log_metric("dpo/reward_margin_step", margin, step=step)


def register_run(
    params: PipelineParams,
    run_name: str,
    report: dict,
    prepared: dict,
    trained: dict,
    candidate_eval: dict,
    baseline_eval: dict,
    aligned: dict,
) -> dict:
    """Log the whole run to MLflow and register the trained weights; return run id and version."""
    import mlflow

    client, experiment_id = connect(params.tracking)
    config = json.dumps(params.model_dump(), sort_keys=True)
    lineage = {
        "data_hash": prepared["data_hash"],
        "base_model": params.base_model,
        "code_version": code_version(),
        "rows_kept": str(report["rows_kept"]),
        "rows_quarantined": str(report["rows_quarantined"]),
        "quarantine_counts": json.dumps(report["rule_counts"], sort_keys=True),
        "validation": "passed" if report["success"] else "failed",
        "config_hash": hashlib.sha256(config.encode()).hexdigest(),
        "model_hash": candidate_eval["model_hash"],
        "baseline": baseline_eval["label"],
        "eval_run_ids": json.dumps({"candidate": candidate_eval["eval_run_ids"],
                                    "baseline": baseline_eval["eval_run_ids"]}),
        "eval_strata": json.dumps(prepared["counts"].get("domain_eval_strata", {}), ensure_ascii=False),
    }
    if report["conflicts"]["approved"]:  # a reviewer let rows that contradict curated data train
        lineage["conflicts_approved"] = f"{report['conflicts']['approved']} ({report['conflicts']['approved_rows']} rows)"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"tunegate.stage": "registered", **{f"lineage.{k}": v for k, v in lineage.items()}})
        mlflow.log_params(flatten(params.model_dump()))
        mlflow.log_metrics(
            {
                "data/rows_in": report["rows_in"],
                "data/rows_kept": report["rows_kept"],
                "data/rows_quarantined": report["rows_quarantined"],
                **{f"data/{rule}": n for rule, n in report["rule_counts"].items()},
                "train/loss": trained["train_loss"],
                "train/seconds": trained["seconds"],
                **eval_metrics("eval", candidate_eval),
                **eval_metrics("baseline", baseline_eval),
            }
        )
        log_training_curves(trained, aligned)
        mlflow.log_dict(params.model_dump(), "config.json")
        mlflow.log_dict({k: v for k, v in report.items() if k not in ("clean", "quarantine")}, "data/validation_report.json")
        mlflow.log_dict(trained, "train/sft_summary.json")
        mlflow.log_dict(aligned, "train/dpo_summary.json")
        mlflow.log_dict(candidate_eval, "eval/candidate.json")
        mlflow.log_dict(baseline_eval, "eval/baseline.json")
        weights = aligned["adapter"] or aligned["model"]  # DPO passes the SFT weights through when skipped
        kind = "adapter" if aligned["adapter"] else "model"
        mlflow.log_artifacts(weights, artifact_path=kind)  # the raw files: evaluation's baseline and cache read them
        logged = log_chat_model(weights, kind, resolve_base_model(params.base_model),
                                trust_remote_code=params.trust_remote_code)

    model_name = params.tracking.registered_model
    ensure_registered_model(client, model_name)
    version = client.create_model_version(
        model_name,
        source=logged["model_uri"],  # an MLflow Model (MLmodel, transformers flavor, task llm/v1/chat)
        run_id=run.info.run_id,
        model_id=logged["model_id"],
        tags={**lineage, "gate": "pending", "config": config, "weights": kind, "method": params.sft.method,
              "merged": logged["merged_uri"],
              "validation_report": f"runs:/{run.info.run_id}/data/validation_report.json"},
        description=f"{run_name}: {params.sft.method} {'adapter on' if kind == 'adapter' else 'fine-tune of'} "
                    f"{params.base_model}",
    )
    return {"run_id": run.info.run_id, "model_name": model_name, "version": str(version.version)}


@task
def register(
    params: PipelineParams,
    run_name: str,
    report: dict,
    prepared: dict,
    trained: dict,
    candidate_eval: dict,
    baseline_eval: dict,
    aligned: dict,
) -> dict:
    """Log the run to MLflow and register the trained weights as a model version."""
    return register_run(params, run_name, report, prepared, trained, candidate_eval, baseline_eval, aligned)


def run_summary(report: dict, trained: dict, baseline_eval: dict, candidate_eval: dict, decision: dict,
                registered: dict, promotion: dict, tracking_uri: str) -> dict:
    """What a person wants at the end of a run, in one small JSON-safe dict."""
    return {
        "rows_kept": report["rows_kept"],
        "rows_quarantined": report["rows_quarantined"],
        "quarantine_file": report["quarantine"],
        "train_loss": trained["train_loss"],
        "train_steps": trained["steps"],
        "baseline": baseline_eval["label"],
        "eval_cache_hits": {"baseline": baseline_eval["cache_hits"], "candidate": candidate_eval["cache_hits"]},
        "eval": {
            t: {"baseline": baseline_eval["tasks"][t]["metrics"], "candidate": candidate_eval["tasks"][t]["metrics"]}
            for t in candidate_eval["tasks"]
        },
        "gate": "passed" if decision["passed"] else "blocked",
        "regressed": decision["regressed"],
        "promoted": promotion["promoted"],
        "model_name": registered["model_name"],
        "mlflow_run_id": registered["run_id"],
        "model_version": registered["version"],
        "mlflow_ui": f"mlflow ui --backend-store-uri {tracking_uri}",
    }


@task
def summarize(report: dict, trained: dict, baseline_eval: dict, candidate_eval: dict, decision: dict,
              registered: dict, promotion: dict, tracking_uri: str, run_dir: str) -> dict:
    """Write summary.json in the run folder after the promotion decision, for the CLI and for people."""
    summary = run_summary(report, trained, baseline_eval, candidate_eval, decision, registered, promotion,
                          tracking_uri)
    (Path(run_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
