"""Stage 2, validate: run the data_checks suites, quarantine failing rows, fail past thresholds.

    python -m tasks.validate data/demo/identity.json data/demo/alpaca_general.json

Outputs, in the stage folder: clean.jsonl (rows that passed, PII redacted under that policy),
quarantine.jsonl (every rejected row with its reasons and source file:line), and report.json
(counts per rule; no row content, so it is safe to log to MLflow and Prefect).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from data_checks import duplicates, format as format_check, pii
from data_checks.gx_suite import flag_expectations, run_suite


class DataValidationError(RuntimeError):
    """Raised when a rule's failure fraction crosses its threshold."""


def _read_jsonl(path: Path) -> list[dict]:
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def validate_records(
    records_path: Path, ingest_rejected_path: Path | None, out_dir: Path, max_fraction: float, pii_policy: str
) -> dict:
    """Check every record; write clean/quarantine/report files; return the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records = _read_jsonl(records_path)
    ingest_rejected = _read_jsonl(ingest_rejected_path) if ingest_rejected_path and ingest_rejected_path.exists() else []

    suites = {"format": format_check, "duplicates": duplicates, "pii": pii}
    frames, details = [], [dict() for _ in records]
    report = {"rows_in": len(records) + len(ingest_rejected), "ingest_rejected": len(ingest_rejected), "suites": []}
    for name, module in suites.items():
        frame, suite_details = module.detect(records)
        if name == "pii" and pii_policy == "redact":
            # Redacted rows are kept, so the flags are not failures; count them instead.
            report["pii_redacted_rows"] = int(frame.any(axis=1).sum())
            frame = frame & False
            suite_details = [dict() for _ in records]
        summary = run_suite(name, frame, flag_expectations(module.RULES, max_fraction)) if len(frame) else {
            "suite": name, "success": True, "rules": []}
        report["suites"].append(summary)
        frames.append(frame)
        for row_details, d in zip(details, suite_details):
            row_details.update(d)

    flags = pd.concat(frames, axis=1) if frames else pd.DataFrame(index=range(len(records)))
    rejected_mask = flags.any(axis=1).to_numpy() if len(records) else []
    quarantine_path, clean_path = out_dir / "quarantine.jsonl", out_dir / "clean.jsonl"
    kept = 0
    with quarantine_path.open("w") as q, clean_path.open("w") as c:
        for row in ingest_rejected:
            q.write(json.dumps(row, ensure_ascii=False) + "\n")
        for rec, rejected, row_details in zip(records, rejected_mask, details):
            if rejected:
                reasons = [f"{rule}: {text}" for rule, text in row_details.items()]
                q.write(json.dumps({"source": rec["source"], "reasons": reasons, "row": rec}, ensure_ascii=False) + "\n")
                continue
            if pii_policy == "redact":
                rec["messages"] = [{**m, "content": pii.redact(m["content"])} for m in rec["messages"]]
            c.write(json.dumps(rec, ensure_ascii=False) + "\n")
            kept += 1

    report.update(
        rows_kept=kept,
        rows_quarantined=report["rows_in"] - kept,
        rule_counts={col: int(flags[col].sum()) for col in flags.columns},
        success=all(s["success"] for s in report["suites"]),
        clean=str(clean_path),
        clean_preferences=None,  # preference data arrives with the multi-format ingest
        quarantine=str(quarantine_path),
    )
    examples = {}
    for rec, row_details in zip(records, details):
        for rule in row_details:
            examples.setdefault(rule, [])
            if len(examples[rule]) < 3:
                examples[rule].append(f"{rec['source']['file']}:{rec['source']['line']}")
    report["examples"] = examples  # file:line only: no content, so no PII
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def failure_message(report: dict) -> str:
    lines = []
    for suite in report["suites"]:
        for rule in suite["rules"]:
            if not rule["success"]:
                where = ", ".join(report["examples"].get(rule["rule"], []))
                lines.append(
                    f"  {rule['rule']} ({rule['description']}): {rule['failed_rows']} rows = "
                    f"{rule['failed_fraction']:.1%} > allowed {rule['max_fraction']:.1%}; e.g. {where}"
                )
    return "Data validation failed:\n" + "\n".join(lines) + f"\nEvery rejected row and its reasons: {report['quarantine']}"


def report_markdown(report: dict) -> str:
    rows = [
        f"| {s['suite']} | {r['rule']} | {r['failed_rows']} | {r['failed_fraction']:.2%} | {r['max_fraction']:.0%} | "
        f"{'pass' if r['success'] else '**FAIL**'} |"
        for s in report["suites"]
        for r in s["rules"]
    ]
    return "\n".join(
        [
            f"# Data validation: {'passed' if report['success'] else 'FAILED'}",
            f"Rows in: {report['rows_in']}, kept: {report['rows_kept']}, quarantined: {report['rows_quarantined']} "
            f"(unreadable at ingest: {report['ingest_rejected']}).",
            "",
            "| suite | rule | failed rows | fraction | allowed | verdict |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )


@task
def validate(ingested: dict, out_dir: str, max_fraction: float, pii_policy: str) -> dict:
    """Run the GE suites; quarantine failing rows; fail when a rule crosses its threshold."""
    report = validate_records(
        Path(ingested["records"]), Path(ingested["rejected"]), Path(out_dir), max_fraction, pii_policy
    )
    create_markdown_artifact(markdown=report_markdown(report), key="data-validation", description="Data checks")
    if not report["success"]:
        raise DataValidationError(failure_message(report))
    return report


if __name__ == "__main__":
    from tasks.ingest import ingest_files

    work = Path(tempfile.mkdtemp(prefix="tunegate-validate-"))
    ingested = ingest_files(sys.argv[1:], work)
    rep = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), work, 0.2, "reject")
    print(report_markdown(rep))
    print(f"\nquarantine: {rep['quarantine']}")
    sys.exit(0 if rep["success"] else 1)
