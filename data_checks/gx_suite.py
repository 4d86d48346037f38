"""Great Expectations over the detector columns: one suite per concern, thresholds per rule, Data Docs.

    run = GxRun(docs_dir)                       # one ephemeral GE context for a validate run
    summary = run.suite("format", frame, {rule: description}, {rule: max_fraction})
    index_html = run.build_docs()               # HTML under docs_dir

GE only ever sees boolean columns (True = the row breaks the rule), never row text, so neither its
results nor the Data Docs can carry PII.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# Each ephemeral context logs where it put a temporary docs site; that is noise per suite.
logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)


def flag_expectations(columns: dict[str, str], max_fraction: float | dict[str, float]) -> list:
    """One expectation per boolean column: at most its `max_fraction` of rows may be True.

    `columns` maps the column to its rule text, carried into the GE result as meta.
    """
    import great_expectations as gx

    limits = max_fraction if isinstance(max_fraction, dict) else {col: max_fraction for col in columns}
    return [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=col, value_set=[False], mostly=1.0 - limits[col], meta={"rule": col, "description": text}
        )
        for col, text in columns.items()
    ]


def rule_summary(rule: str, description: str, max_fraction: float, failed: int = 0, measured: int = 0,
                 success: bool = True) -> dict:
    """One rule's outcome. Over zero measured rows nothing failed and no fraction was measured: 0.0, measured 0."""
    return {"rule": rule, "description": description, "success": bool(success) or measured == 0,
            "failed_rows": failed, "measured_rows": measured,
            "failed_fraction": failed / measured if measured else 0.0, "max_fraction": max_fraction}


def suite_summary(name: str, rules: list[dict]) -> dict:
    """A suite's outcome; `nothing_to_check` when no rule had a row to measure (an empty window, no pairs)."""
    return {"suite": name, "success": all(r["success"] for r in rules), "rules": rules,
            "nothing_to_check": all(r["measured_rows"] == 0 for r in rules)}


def _summary(name: str, result) -> dict:
    # GE's unexpected_percent is None when every value is null (no row measured): read counts instead.
    return suite_summary(name, [
        rule_summary(r.expectation_config.meta["rule"], r.expectation_config.meta["description"],
                     round(1.0 - r.expectation_config.kwargs.get("mostly", 1.0), 6),
                     failed=int(r.result.get("unexpected_count") or 0),
                     measured=int(r.result.get("element_count") or 0) - int(r.result.get("missing_count") or 0),
                     success=r.success)
        for r in result.results])


class GxRun:
    """One ephemeral GE context whose validation results are rendered as Data Docs in `docs_dir`."""

    def __init__(self, docs_dir: Path | None = None):
        import great_expectations as gx

        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = {"globally": False}
        self.docs_dir = docs_dir
        self.site = "tunegate"
        if docs_dir is not None:
            self.context.add_data_docs_site(
                site_name=self.site,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )

    def suite(self, name: str, frame: pd.DataFrame, rules: dict[str, str], max_fraction: dict[str, float]) -> dict:
        """Validate `frame` with one expectation per rule; return a JSON-safe summary per rule."""
        import great_expectations as gx

        if frame.empty:  # GE refuses an empty batch; zero rows read as nothing failed, nothing measured
            return suite_summary(name, [rule_summary(r, d, max_fraction[r]) for r, d in rules.items()])
        batch = (
            self.context.data_sources.add_pandas(f"{name}_source")
            .add_dataframe_asset(f"{name}_asset")
            .add_batch_definition_whole_dataframe("all_rows")
        )
        suite = self.context.suites.add(gx.ExpectationSuite(name=name, expectations=flag_expectations(rules, max_fraction)))
        validation = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[self.site])] if self.docs_dir else []
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(name=f"{name}_checkpoint", validation_definitions=[validation], actions=actions,
                          result_format="SUMMARY")
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame[list(rules)]})
        return _summary(name, next(iter(result.run_results.values())))

    def build_docs(self) -> str | None:
        """Render the Data Docs site; return the path of its index.html."""
        if self.docs_dir is None:
            return None
        self.context.build_data_docs(site_names=[self.site])
        return str(Path(self.docs_dir) / "index.html")

