"""Hyperparameter search as a flow: Optuna trials over sweep.space, the best one gated like any run.

    tunegate sweep configs/demo.yaml --trials 8            # or start the `sweep` deployment from the Prefect UI
    tunegate sweep configs/demo.yaml --trials 8 --study demo-20261207-101500   # resume a study
    python -m flows.sweep configs/tiny.yaml --set sweep.trials=4

The data stages and the eval suite run once; every trial reuses their results. Trials run one after another
in this process, or, when the sweep itself runs from a deployment and its study is in a database server, as
flow runs of the `sweep-trial` deployment next to it, `sweep.parallel` at a time: any free worker of the pool
takes each one, so trials spread over the workers. (Tasks submitted to a task runner would all run inside
this flow run's process, on whichever single worker took it.) The best completed trial's values then go
through finetune_pipeline, whose stages re-evaluate it on the full suite, judge, gate, register and promote
it; the sweep never promotes by its own objective.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.deployments import run_deployment
from prefect.runtime import deployment

from flows.finetune import finetune_pipeline
from tasks.base_model import base_model
from tasks.evaluate import EvalSuite, build_eval_suite
from tasks.ingest import ingest
from tasks.prepare import Prepared, prepare
from tasks.promote import RunSummary
from tasks.sft import check_setup
from tasks.sweep import best_candidate, check_sweep, next_trial, open_study, record_gate, record_study, wait_for_slot
from tasks.trial import TrialOutcome, run_trial
from tasks.validate import validate
from tunegate.config import PipelineParams, load_config
from tunegate.study import StudyRef, TrialRef, is_server_database


@flow(name="sweep-trial", flow_run_name="{trial.study.name}-trial-{trial.number}")
def sweep_trial(params: PipelineParams, trial: TrialRef, prepared: Prepared, suite: EvalSuite) -> TrialOutcome:
    """One trial of a sweep: train its values, report its eval loss to the pruner, tell the study how it ended."""
    return run_trial(trial, params, prepared, suite)


def trial_deployment(study: StudyRef) -> str | None:
    """The deployment that runs this sweep's trials as flow runs of their own, or None: one after another here.

    Only a sweep started from a deployment has one next to it (deployments/serve.py makes `sweep` and
    `sweep-trial` together), and only a study in a database server takes writes from several processes on
    several machines (sqlite is one file; Optuna advises against it for parallel trials)."""
    if deployment.name and is_server_database(study.storage):
        return f"sweep-trial/{deployment.name}-trial"
    return None


def run_trials(study: StudyRef, params: PipelineParams, prepared: Prepared, suite: EvalSuite) -> None:
    """Start trials until the study has sweep.trials finished ones, here or on the pool's workers."""
    where = trial_deployment(study)
    slots = params.sweep.parallel if where else 1
    launched: dict[int, str] = {}
    while (progress := wait_for_slot(study, params, launched, slots)).may_start:
        launched = progress.in_flight
        trial = next_trial(study, params.sweep)
        if where is None:
            sweep_trial(params, trial, prepared, suite)
        else:  # a flow run of its own, linked to this one as a subflow in the UI; any free worker takes it
            run = run_deployment(where, timeout=0, parameters={"params": params, "trial": trial, "prepared": prepared,
                                                               "suite": suite})
            launched[trial.number] = str(run.id)


@flow(name="sweep")
def sweep(params: PipelineParams) -> RunSummary:
    """Search sweep.space with Optuna trials, then gate the best trial like any candidate."""
    params = params.named(deployment.name)
    run = params.paths()

    check_setup(params.sft)
    check_sweep(params)
    model = base_model(params.model)
    ingested = ingest(params.data, run.data)
    validated = validate(ingested, params.data, model, run.data)
    prepared = prepare(validated, params.data, model, run.data)
    suite = build_eval_suite(prepared, params.eval, params.gate, run.eval)
    study = open_study(params, suite)
    run_trials(study, params, prepared, suite)
    result = record_study(study, params.sweep, params.tracking, run.run)
    candidate = best_candidate(result, params)
    gated = finetune_pipeline(candidate, return_state=True)
    record_gate(result, candidate, params.tracking)
    return gated.result()  # raises what stopped the candidate (GateBlocked ...), as `tunegate run` exits 1


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    print(sweep(load_config(*overrides_from_argv(sys.argv[1:]))).model_dump_json(indent=2))
