"""Run a Great Expectations suite over a frame of detector columns, in an ephemeral GE context."""

from __future__ import annotations

import logging
import os

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Each ephemeral context logs where it put a temporary docs site; that is noise per suite.
logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def flag_expectations(columns: dict[str, str], max_fraction: float) -> list:
    """One expectation per boolean column: at most `max_fraction` of rows may be True.

    `columns` maps the column to its rule text, carried into the GE result as meta.
    """
    import great_expectations as gx

    return [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=col, value_set=[False], mostly=1.0 - max_fraction, meta={"rule": col, "description": text}
        )
        for col, text in columns.items()
    ]


def run_suite(name: str, frame: pd.DataFrame, expectations: list) -> dict:
    """Validate `frame` with a suite made of `expectations`; return a JSON-safe summary per rule."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch_def = (
        context.data_sources.add_pandas(f"{name}_source")
        .add_dataframe_asset(f"{name}_asset")
        .add_batch_definition_whole_dataframe("all_rows")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
    rules = []
    for r in result.results:
        kwargs = r.expectation_config.kwargs
        rules.append(
            {
                "rule": r.expectation_config.meta["rule"],
                "description": r.expectation_config.meta["description"],
                "success": bool(r.success),
                "failed_rows": int(r.result.get("unexpected_count", 0)),
                "failed_fraction": float(r.result.get("unexpected_percent", 0.0)) / 100.0,
                "max_fraction": round(1.0 - kwargs["mostly"], 6),
            }
        )
    return {"suite": name, "success": bool(result.success), "rules": rules}
