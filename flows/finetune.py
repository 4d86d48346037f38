"""The gated fine-tuning flow: ingest -> validate -> prepare -> sft -> evaluate -> register -> gate -> promote.

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

from tasks.evaluate import build_eval_suite, evaluate_suite, resolve_baseline
from tasks.gate import gate
from tasks.ingest import ingest
from tasks.prepare import prepare
from tasks.promote import promote
from tasks.register import register, summarize
from tasks.sft import sft
from tasks.validate import validate
from tunegate.config import PipelineParams, load_config


@flow(name="finetune-pipeline")
def finetune_pipeline(params: PipelineParams) -> dict:
    """Fine-tune on validated data and promote only when no eval regresses past its gate."""
    run_name = params.run_name or f"{params.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(params.output_dir).resolve() / run_name
    data, ev = params.data, params.eval

    ingested = ingest(data.domain_files + data.general_files, str(run_dir / "data"))
    report = validate(ingested, str(run_dir / "data"), data.max_rejected_fraction, data.pii_policy)
    prepared = prepare(report, data.general_files, data.general_holdout_file, params.base_model,
                       str(run_dir / "data"), data.eval_fraction, data.split_seed, params.trust_remote_code)
    suite = build_eval_suite(prepared, ev, params.gate.rules, params.tracking, str(run_dir / "eval"),
                             params.trust_remote_code)
    trained = sft(prepared, params.sft, str(run_dir / "sft"), params.trust_remote_code)
    baseline = resolve_baseline(params.tracking, str(run_dir / "baseline"))
    baseline_eval = evaluate_suite(baseline, suite, params.tracking)
    candidate_eval = evaluate_suite({"label": "candidate", "adapter": trained["adapter"], "version": None},
                                    suite, params.tracking)
    registered = register(params, run_name, report, prepared, trained, candidate_eval, baseline_eval)
    decision = gate(params.gate, candidate_eval, baseline_eval, registered, params.tracking)
    summary = summarize(report, trained, baseline_eval, candidate_eval, decision, registered,
                        params.tracking.tracking_uri, str(run_dir))
    promote(decision, registered, params.tracking)
    return summary

if __name__ == "__main__":
    print(finetune_pipeline(load_config(sys.argv[1], sys.argv[2:])))
