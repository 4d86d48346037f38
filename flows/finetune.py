"""The gated fine-tuning flow: ingest -> validate -> prepare -> sft -> dpo -> evaluate -> register -> gate ->
promote -> export.

    tunegate run configs/demo.yaml                   # or: make demo
    python -m flows.finetune configs/tiny.yaml       # same flow, no CLI summary

The eval suite is built (and its data checked) before training. The candidate is evaluated next to
the current champion (or the base model for the first run) on that suite, with cached results
reused, registered in MLflow, and promoted only when the gate passes. A blocked gate fails the flow run.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from prefect import flow
from prefect.runtime import deployment

from tasks.dpo import dpo
from tasks.evaluate import build_eval_suite, evaluate_suite, resolve_baseline
from tasks.export import export
from tasks.gate import gate
from tasks.ingest import ingest
from tasks.prepare import prepare
from tasks.promote import conclude, promote
from tasks.register import register, summarize
from tasks.sft import check_setup, sft
from tasks.validate import validate
from tunegate.config import PipelineParams, load_config


@flow(name="finetune-pipeline")
def finetune_pipeline(params: PipelineParams) -> dict:
    """Fine-tune on validated data and promote only when no eval regresses past its gate."""
    # Named after the deployment when one started it, so MLflow lists e.g. finetune-demo-20261122-0300.
    prefix = f"{deployment.name}-{params.name}" if deployment.name else params.name
    run_name = params.run_name or f"{prefix}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(params.output_dir).resolve() / run_name
    data, ev = params.data, params.eval

    check_setup(params.sft)
    ingested = ingest(data, str(run_dir / "data"))
    report = validate(ingested, data, params.model, str(run_dir / "data"))
    prepared = prepare(report, data, params.model, str(run_dir / "data"))
    suite = build_eval_suite(prepared, ev, params.gate.rules, params.tracking, str(run_dir / "eval"),
                             params.trust_remote_code)
    trained = sft(prepared, params.sft, str(run_dir / "sft"), str(Path(params.output_dir).resolve() / "checkpoints"),
                  params.trust_remote_code)
    aligned = dpo(prepared["base_model_path"], trained, report["clean_preferences"], params.dpo,
                  str(run_dir / "dpo"), params.trust_remote_code)
    baseline = resolve_baseline(params.tracking, str(run_dir / "baseline"))
    baseline_eval = evaluate_suite(baseline, suite, params.tracking)
    candidate = {"label": "candidate", "adapter": aligned["adapter"], "model": aligned["model"], "version": None}
    candidate_eval = evaluate_suite(candidate, suite, params.tracking)
    registered = register(params, run_name, report, prepared, trained, candidate_eval, baseline_eval, aligned)
    decision = gate(params.gate, candidate_eval, baseline_eval, registered, params.tracking)
    promotion = promote(decision, registered, params.tracking)
    summary = summarize(report, trained, baseline_eval, candidate_eval, decision, registered, promotion,
                        params.tracking.tracking_uri, str(run_dir))
    export(promotion, prepared["base_model_path"], aligned, str(run_dir / "export"), params.tracking.registered_model,
           params.sft.max_length)
    return conclude(summary, decision)

if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    print(finetune_pipeline(load_config(*overrides_from_argv(sys.argv[1:]))))
