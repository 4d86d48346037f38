"""The gated fine-tuning flow: ingest -> validate -> preference store -> reward model -> prepare -> sft -> dpo ->
rl -> evaluate -> judge -> reward -> register -> gate -> promote -> export.

    tunegate run configs/demo.yaml                   # or: make demo
    python -m flows.finetune configs/tiny.yaml       # same flow, no CLI summary

The eval suite is built (and its data checked) before training. The candidate is evaluated next to
the current champion (or the base model for the first run) on that suite, with cached results
reused, registered in MLflow, and promoted only when the gate passes. A blocked gate fails the flow run.
"""

from __future__ import annotations

import sys

from prefect import flow
from prefect.runtime import deployment

from tasks.base_model import base_model
from tasks.dpo import dpo
from tasks.evaluate import build_eval_suite, evaluate, resolve_baseline
from tasks.export import export
from tasks.gate import gate
from tasks.judge import judge
from tasks.ingest import ingest
from tasks.preferences import preference_store
from tasks.prepare import prepare
from tasks.promote import RunSummary, await_review, conclude, promote, summarize
from tasks.register import register
from tasks.reward import reward_model
from tasks.reward_eval import reward_eval
from tasks.rl import check_rl_reward, rl
from tasks.sft import check_setup, sft
from tasks.validate import validate
from tunegate.config import PipelineParams, load_config


@flow(name="finetune-pipeline")
def finetune_pipeline(params: PipelineParams) -> RunSummary:
    """Fine-tune on validated data and promote only when no eval regresses past its gate."""
    # Named after the deployment when one started it, so MLflow lists e.g. finetune-demo-20261122-0300.
    params = params.named(deployment.name)
    run = params.paths()

    check_setup(params.sft)
    model = base_model(params.model)
    ingested = ingest(params.data, run.data)
    validated = validate(ingested, params.data, model, run.data)
    store = preference_store(validated, params.data, params.reward, params.tracking)
    rewarder = reward_model(store, model, params.reward, params.tracking)
    check_rl_reward(rewarder, params.rl)
    prepared = prepare(validated, params.data, model, run.data)
    suite = build_eval_suite(prepared, params.eval, params.gate, run.eval)
    trained = sft(prepared, params.sft, run.sft, run.checkpoints)
    aligned = dpo(trained, prepared, params.dpo, run.dpo)
    aligned = rl(aligned, rewarder, prepared, params.rl).policy
    baseline = resolve_baseline(params.tracking, run.baseline)
    evals = evaluate(aligned, baseline, suite, params.tracking)
    evals = judge(evals, params.judge)
    evals = reward_eval(evals, rewarder, params.reward)
    registered = register(params, prepared, aligned, evals)
    decision = gate(params.gate, registered, params.tracking)
    review = await_review(decision, registered.version, params.gate)
    promotion = promote(decision, registered, params.tracking, review)
    summary = summarize(registered, decision, promotion, run.run)
    export(promotion, registered, run.export)
    return conclude(summary, decision)


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    print(finetune_pipeline(load_config(*overrides_from_argv(sys.argv[1:]))).model_dump_json(indent=2))
