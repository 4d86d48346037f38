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
import warnings
from pathlib import Path

from prefect import task
from pydantic import BaseModel, ConfigDict

from data_checks.pii import redact_value
from tasks.dpo import Aligned
from tasks.evaluate import SUITE_VERSION_TAG, Comparison, Evaluation, answered_by_both, load_metrics_module
from tasks.prepare import Prepared
from tasks.quantize import QUANTIZED_FROM, Quantized
from tunegate.caching import file_sha256
from tunegate.chat_model import log_chat_model
from tunegate.config import CanaryConfig, PipelineParams
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


def eval_metrics(prefix: str, evaluation: Evaluation) -> dict[str, float]:
    return {
        f"{prefix}/{task_name}/{metric}": value
        for task_name, result in evaluation.tasks.items()
        for metric, value in result["metrics"].items()
    }


def log_rl(rl: dict) -> None:
    """RL's per-step total reward, each reward part and KL as MLflow metrics; its summary as rl_summary.json."""
    import mlflow

    for step, value in rl["reward_curve"]:
        mlflow.log_metric("rl/reward_step", value, step=step)
    for part, curve in rl["component_curves"].items():
        for step, value in curve:
            mlflow.log_metric(f"rl/{part}_step", value, step=step)
    for step, value in rl["kl_curve"]:
        mlflow.log_metric("rl/kl_step", value, step=step)
    mlflow.log_dict({k: v for k, v in rl.items() if not k.endswith(("_curve", "_curves"))}, "train/rl_summary.json")


def log_training_curves(aligned: Aligned) -> None:
    """Per-step SFT train/eval loss and DPO loss/margin as MLflow metrics, plus the loss plot."""
    import mlflow

    trained = aligned.sft
    for step, loss in trained.loss_curve:
        mlflow.log_metric("train/loss_step", loss, step=step)
    for step, loss in trained.eval_loss_curve:
        mlflow.log_metric("train/eval_loss_step", loss, step=step)
    mlflow.log_artifact(trained.loss_plot, artifact_path="train")
    if not aligned.skipped:
        for step, loss in aligned.loss_curve:
            mlflow.log_metric("dpo/loss_step", loss, step=step)
        for step, margin in aligned.margin_curve:
            mlflow.log_metric("dpo/reward_margin_step", margin, step=step)


def jsonl_frame(path: str, columns: dict):
    """A JSONL file as a DataFrame of the named fields, each cell a string (JSON for nested values)."""
    import pandas as pd

    def cell(value) -> str:
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pd.DataFrame({name: [cell(get(r)) for r in rows] for name, get in columns.items()})


def log_datasets(prepared: Prepared, feedback_files: list[str]) -> list[str]:
    """The run's train, eval and feedback data as MLflow dataset inputs (digest, source, schema, sha256).

    Only the files' place, hash and shape reach MLflow, never their rows. The feedback dataset names
    the traces (or log records) its rows came from, in data/feedback_sources.json. Returns those ids.
    """
    import mlflow

    def log(path: str, name: str, context: str, columns: dict, **tags) -> None:
        frame = jsonl_frame(path, columns)
        with warnings.catch_warnings():  # MLflow 3.17 registers its local source class twice and says so
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(frame, source=str(Path(path).resolve()), name=name)
        mlflow.log_input(dataset, context=context, tags={"sha256": file_sha256(path), "rows": str(len(frame)), **tags})

    conversation = {"prompt": lambda r: r.get("prompt") or r.get("messages", [])[:-1],
                    "completion": lambda r: r.get("completion") or r.get("messages", [])[-1:]}
    log(prepared.train, "train", "training", conversation)
    eval_columns = {"prompt": lambda r: r["prompt"], "reference": lambda r: r["reference"],
                    "stratum": lambda r: r.get("stratum", "all")}
    for name in ("domain_eval", "general_eval", "production_eval"):
        if getattr(prepared, name):
            log(getattr(prepared, name), name, "eval", eval_columns)
    sources: list[str] = []
    for path in feedback_files:
        frame = jsonl_frame(path, {"feedback_sources": lambda r: r.get("feedback_sources", [])})
        sources += [s for cell in frame["feedback_sources"] for s in json.loads(cell) if s not in sources]
        log(path, "feedback", "training", {"messages": lambda r: r.get("messages") or r.get("input"),
                                           "feedback_sources": lambda r: r.get("feedback_sources", [])},
            traces=str(sum(s.startswith("tr-") for s in sources)))
    if feedback_files:
        mlflow.log_dict({"feedback_sources": sources}, "data/feedback_sources.json")
    return sources


def side_by_side(evals: Comparison, limit: int = 160) -> dict[str, list]:
    """Each generation-task prompt once: reference, the baseline's and the candidate's answers, their per-sample
    metrics and how much the answers agree (token F1); the rows where the two models disagree most come first."""
    token_f1 = load_metrics_module().token_f1
    rows = []
    for name, cand, base in answered_by_both(evals.candidate.tasks, evals.baseline.tasks):
        references = cand.get("references") or base.get("references") or [""] * len(cand["answers"])
        for i, (new, old) in enumerate(zip(cand["answers"], base["answers"])):
            rows.append({  # the columns a reviewer reads first come first: the UI's table is wide
                "prompt": cand["prompts"][i][-limit * 4:], "reference": references[i],
                "baseline": old, "candidate": new,
                "agreement": round(1.0 if new.strip() == old.strip() else token_f1(new, old), 4),
                "task": name, "doc_id": cand["doc_ids"][i], "stratum": (cand.get("strata") or ["all"] * (i + 1))[i],
                **{f"{metric} baseline": base["samples"][metric][i] for metric in base["samples"]},
                **{f"{metric} candidate": cand["samples"][metric][i] for metric in cand["samples"]},
            })
    judged = {(v["task"], v["doc_id"]): v for v in evals.candidate.tasks.get("judge", {}).get("verdicts", [])}
    for row in rows:  # the pairwise judge's call on this prompt, when a judge ran
        if (row["task"], row["doc_id"]) in judged:
            v = judged[(row["task"], row["doc_id"])]
            row |= {"judge": v["outcome"], "judge reason": v["reason_a_first"] or v["reason_b_first"]}
    rows.sort(key=lambda r: r["agreement"])
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return {c: [r.get(c) for r in rows] for c in columns}


SIDE_BY_SIDE_TAG = "tunegate.side_by_side"  # marks the traces log_side_by_side_traces writes


def log_side_by_side_traces(table: dict[str, list]) -> int:
    """Each side-by-side row also as a trace of the active run, so a reviewer can record an A/B preference on it.

    MLflow assessments attach to traces, not to table rows. In the MLflow UI the run's Traces tab lists one
    trace per prompt (prompt and reference in, both answers out); a reviewer opens one and adds feedback
    `preference` = candidate, baseline or tie (or calls mlflow.log_feedback); the gate report counts them
    (tasks/gate.py reviewer_preferences). Logged in reverse, so the newest-first list starts where the models
    disagree most. Returns the number of traces.
    """
    import mlflow

    rows = [dict(zip(table, values)) for values in zip(*table.values())]
    for rank, row in reversed(list(enumerate(rows, 1))):
        with mlflow.start_span(name=f"{row['task']} doc {row['doc_id']}") as span:
            span.set_inputs({"prompt": row["prompt"], "reference": row["reference"]})
            span.set_attributes({k: v for k, v in row.items() if k not in ("prompt", "reference", "baseline",
                                                                            "candidate", "judge reason")})
            span.set_outputs({"baseline": row["baseline"], "candidate": row["candidate"],
                              **({"judge": row["judge"], "judge reason": row["judge reason"]} if row.get("judge")
                                 else {})})
            mlflow.update_current_trace(tags={SIDE_BY_SIDE_TAG: str(rank), "tunegate.task": row["task"],
                                              "tunegate.doc_id": str(row["doc_id"])})
    mlflow.flush_trace_async_logging()  # the review form links to them: they must be in the store now
    return len(rows)


class RegisteredVersion(BaseModel):
    """A registered model version, its MLflow run and the evaluations its gate reads: what gate and promote need."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    model_name: str
    version: str
    run_name: str
    tracking_uri: str
    evals: Comparison
    canary: CanaryConfig | None = None  # serve.canary of the run: a passing version goes on `candidate` first


class Registered(RegisteredVersion):
    """The model version this run registered, and the evidence it was registered with."""

    prepared: Prepared
    aligned: Aligned


class RegisteredVariant(RegisteredVersion):
    """A registered quantized variant: the version, the evaluations its gate reads, and what was quantized how."""

    quantized: Quantized


def register_run(params: PipelineParams, prepared: Prepared, aligned: Aligned, evals: Comparison) -> Registered:
    """Log the whole run to MLflow (RL's curves when it ran) and register the trained weights; run id and version."""
    import mlflow

    client, experiment_id = connect(params.tracking)
    validated, trained, candidate, baseline = prepared.validated, aligned.sft, evals.candidate, evals.baseline
    config = json.dumps(params.model_dump(), sort_keys=True)
    lineage = {
        "data_hash": prepared.data_hash,
        "base_model": params.base_model,
        "code_version": code_version(),
        "rows_kept": str(validated.rows_kept),
        "rows_quarantined": str(validated.rows_quarantined),
        "quarantine_counts": json.dumps(validated.rule_counts, sort_keys=True),
        "validation": "passed" if validated.success else "failed",
        "config_hash": hashlib.sha256(config.encode()).hexdigest(),
        "model_hash": candidate.model_hash,
        "baseline": baseline.label,
        "eval_run_ids": json.dumps({"candidate": candidate.eval_run_ids, "baseline": baseline.eval_run_ids}),
        "eval_strata": json.dumps(prepared.counts.get("domain_eval_strata", {}), ensure_ascii=False),
    }
    if validated.conflicts_approved:  # a reviewer let rows that contradict curated data train
        lineage["conflicts_approved"] = f"{validated.conflicts_approved} ({validated.conflicts_approved_rows} rows)"
    with mlflow.start_run(experiment_id=experiment_id, run_name=params.run_name) as run:
        mlflow.set_tags({"tunegate.stage": "registered", **{f"lineage.{k}": v for k, v in lineage.items()}})
        mlflow.log_params(flatten(params.model_dump()))
        mlflow.log_metrics(
            {
                "data/rows_in": validated.rows_in,
                "data/rows_kept": validated.rows_kept,
                "data/rows_quarantined": validated.rows_quarantined,
                **{f"data/{rule}": n for rule, n in validated.rule_counts.items()},
                **{f"data/{name}": v for name, v in validated.rater_metrics.items()},  # the window's raters
                "train/loss": trained.train_loss,
                "train/seconds": trained.seconds,
                **eval_metrics("eval", candidate),
                **eval_metrics("baseline", baseline),
            }
        )
        log_training_curves(aligned)
        if aligned.rl:
            log_rl(aligned.rl)
        log_datasets(prepared, params.data.feedback_files + params.data.feedback_preference_files)
        mlflow.log_dict(params.model_dump(), "config.json")
        report = json.loads(Path(validated.report_file).read_text())
        mlflow.log_dict({k: v for k, v in report.items() if k not in ("clean", "quarantine")},
                        "data/validation_report.json")
        mlflow.log_dict(trained.model_dump(mode="json"), "train/sft_summary.json")
        mlflow.log_dict(aligned.model_dump(mode="json", exclude={"sft", "rl"}), "train/dpo_summary.json")
        mlflow.log_dict(candidate.model_dump(mode="json"), "eval/candidate.json")
        mlflow.log_dict(baseline.model_dump(mode="json"), "eval/baseline.json")
        table = side_by_side(evals)
        if table and params.serve.redact_pii:  # model answers reach the UI: the same care as served traces
            table = redact_value(table)
        if table:  # the UI's artifact view shows it as a table; a reviewer reads both answers per prompt
            mlflow.log_table(data=table, artifact_file="eval/side_by_side.json")
            log_side_by_side_traces(table)
        kind = "adapter" if aligned.adapter else "model"  # DPO passes the SFT weights through when skipped
        mlflow.log_artifacts(aligned.weights, artifact_path=kind)  # the raw files: evaluation's baseline reads them
        logged = log_chat_model(aligned.weights, kind, prepared.base.path,
                                trust_remote_code=prepared.base.trust_remote_code)

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
        description=f"{params.run_name}: {params.sft.method} {'adapter on' if kind == 'adapter' else 'fine-tune of'} "
                    f"{params.base_model}",
    )
    return Registered(run_id=run.info.run_id, model_name=model_name, version=str(version.version),
                      run_name=params.run_name, tracking_uri=params.tracking.tracking_uri, prepared=prepared,
                      aligned=aligned, evals=evals, canary=params.serve.canary)


@task
def register(params: PipelineParams, prepared: Prepared, aligned: Aligned, evals: Comparison) -> Registered:
    """Log the run to MLflow and register the trained weights as a model version."""
    return register_run(params, prepared, aligned, evals)


def register_variant(quantized: Quantized, evals: Comparison, suite_version: str, params: PipelineParams
                     ) -> RegisteredVariant:
    """Log a quantized variant, its evaluations and its lineage as an MLflow run; register it as a new version.

    The version's source is the variant as a chat MLflow Model (chat/); `model/` holds the safetensors
    checkpoint that was evaluated, and its `merged` tag points there, so serve-model loads exactly that.
    """
    import mlflow

    client, experiment_id = connect(params.tracking)
    source, candidate, baseline = quantized.source, evals.candidate, evals.baseline
    lineage = {
        QUANTIZED_FROM: source.version,
        "quantize.method": quantized.method,
        "quantize.library": quantized.library,
        "quantize.source_run": source.run_id,
        "quantize.source_bytes": str(source.bytes),
        "quantize.bytes": str(quantized.bytes),
        "quantize.int8_layers": f"{quantized.int8_layers}/{quantized.linear_layers}",
        SUITE_VERSION_TAG: suite_version,  # gated on the suite this version was gated on (tasks/evaluate.py)
        "base_model": source.base_model,
        "data_hash": source.data_hash,
        "code_version": code_version(),
        "model_hash": candidate.model_hash,
        "baseline": baseline.label,
        "eval_run_ids": json.dumps({"candidate": candidate.eval_run_ids, "baseline": baseline.eval_run_ids}),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=params.run_name) as run:
        mlflow.set_tags({"tunegate.stage": "registered", **{f"lineage.{k}": v for k, v in lineage.items()}})
        mlflow.log_params({"quantize.method": quantized.method, "quantize.library": quantized.library,
                           "quantize.source_version": source.version})
        mlflow.log_metrics({"size/source_mb": source.bytes / 2**20, "size/quantized_mb": quantized.bytes / 2**20,
                            "quantize/seconds": quantized.seconds, **eval_metrics("eval", candidate),
                            **eval_metrics("baseline", baseline)})
        mlflow.log_dict(quantized.model_dump(mode="json"), "quantize/summary.json")
        mlflow.log_dict(candidate.model_dump(mode="json"), "eval/candidate.json")
        mlflow.log_dict(baseline.model_dump(mode="json"), "eval/baseline.json")
        table = side_by_side(evals)
        if table and params.serve.redact_pii:
            table = redact_value(table)
        if table:
            mlflow.log_table(data=table, artifact_file="eval/side_by_side.json")
            log_side_by_side_traces(table)
        mlflow.log_artifacts(quantized.model, artifact_path="model")
        mlflow.log_artifacts(quantized.chat_model, artifact_path="chat")

    model_name = params.tracking.registered_model
    ensure_registered_model(client, model_name)
    version = client.create_model_version(
        model_name, source=f"runs:/{run.info.run_id}/chat", run_id=run.info.run_id,
        tags={**lineage, "gate": "pending", "config": source.config, "weights": "model",
              "merged": f"runs:/{run.info.run_id}/model"},
        description=f"{params.run_name}: {quantized.method} ({quantized.library}) of version {source.version}",
    )
    return RegisteredVariant(run_id=run.info.run_id, model_name=model_name, version=str(version.version),
                             run_name=params.run_name, tracking_uri=params.tracking.tracking_uri, evals=evals,
                             quantized=quantized)


@task
def register_quantized(quantized: Quantized, evals: Comparison, suite_version: str, params: PipelineParams
                       ) -> RegisteredVariant:
    """Log the quantized variant to MLflow and register it as a new model version of the same model."""
    return register_variant(quantized, evals, suite_version, params)
