"""A quantized variant of a registered version, gated like any candidate: check -> champion's suite -> quantize ->
evaluate -> reward -> register -> gate -> promote.

    tunegate quantize 3 --method int8 --config configs/demo.yaml      # prints the summary; exit 1 unless promoted
    python -m flows.quantize 3 int8 configs/demo.yaml [--set ...]     # same flow, no CLI summary

The variant is scored against the champion on the suite the champion was gated on (rebuilt from its run's
files, checked against the hashes its evaluation recorded; the champion's scores come from the eval
cache), and by the `current` reward model when the config has a `reward:` section, under the config's
gate rules. It becomes a new version of the same registered model, with
its lineage (quantized_from, method, library, source run, sizes), and is promoted only when nothing
regresses; then serve-model switches to it as to any champion. A blocked gate fails the flow run.
"""

from __future__ import annotations

import sys
from datetime import datetime

from prefect import flow

from tasks.evaluate import ModelUnderTest, compare, gated_suite, resolve_baseline
from tasks.gate import gate
from tasks.promote import VariantSummary, await_review, conclude_variant, promote
from tasks.quantize import check_request, quantize, quantize_source
from tasks.register import register_quantized
from tasks.reward import registered_reward_model
from tasks.reward_eval import reward_eval
from tunegate.config import PipelineParams, QuantizeConfig, load_config


@flow(name="quantize-version")
def quantize_version(version: str, cfg: QuantizeConfig, params: PipelineParams) -> VariantSummary:
    """Quantize a version and promote the variant only when it passes the gate against the champion."""
    params = params.model_copy(update={"run_name": params.run_name or
                                       f"quantize-v{version}-{cfg.method}-{datetime.now():%Y%m%d-%H%M%S}"})
    run = params.paths()

    check_request(version, cfg, params.tracking)
    baseline = resolve_baseline(params.tracking, run.baseline)
    suite = gated_suite(baseline, params.gate, params.tracking)
    source = quantize_source(version, params.tracking, f"{run.run}/source")
    quantized = quantize(cfg, source, f"{run.run}/quantized")
    evals = compare(ModelUnderTest(label="candidate", model=quantized.model), baseline, suite, params.tracking)
    evals = reward_eval(evals, registered_reward_model(params.reward, params.tracking, f"{run.run}/reward"),
                        params.reward)
    registered = register_quantized(quantized, evals, baseline.version, params)
    decision = gate(params.gate, registered, params.tracking)
    review = await_review(decision, registered.version, params.gate)
    promotion = promote(decision, registered, params.tracking, review)
    return conclude_variant(registered, decision, promotion, run.run)


if __name__ == "__main__":
    from tunegate.config import overrides_from_argv

    config, sets = overrides_from_argv(sys.argv[3:])
    print(quantize_version(sys.argv[1], QuantizeConfig(method=sys.argv[2]), load_config(config, sets))
          .model_dump_json(indent=2))
