"""Stage 2, validate: run the data_checks suites, quarantine failing rows, fail past per-rule thresholds.

    python -m tasks.validate data/demo/identity.json data/demo/alpaca_general.json

Suites, one concern each (data_checks/): format, length, duplicates, pii, leakage, and for
preference pairs also preference. Detectors compute boolean columns over all rows at once, then
GE asserts each rule's failing share against its threshold (`data.checks.max_fraction`, default
`data.max_rejected_fraction`).

Outputs, in the stage folder:
- clean.jsonl: SFT rows that passed (PII redacted where that type's policy is redact);
- clean_preferences.jsonl: preference pairs that passed (empty when there are none);
- quarantine.jsonl: every rejected row with its reasons and source file:line;
- data_docs/index.html: GE Data Docs of every suite;
- report.json: counts per rule, examples as file:line + reason + a PII-redacted excerpt, and no
  other row content, so it is safe to log to MLflow and Prefect.

Leakage runs here, not in prepare: the quarantine and the report live here, and prepare's own
`is_eval_row` tells which domain rows prepare will hold out, so both stages see the same split.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact

from data_checks import duplicates, format as format_check, leakage, length, pii, preference
from data_checks.gx_suite import GxRun
from data_checks.text import TextView
from tunegate.caching import STAGE_CACHE
from tunegate.config import ChecksConfig


class DataValidationError(RuntimeError):
    """Raised when a rule's failure fraction crosses its threshold."""


def _read_jsonl(path: Path | None) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    with Path(path).open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def _excerpt(value, limit: int = 160) -> str:
    """A short, PII-redacted look at a row for the report: redacted first, then cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return pii.redact(text[:4000])[:limit]


def _redact_message(m: dict, kinds) -> dict:
    out = {**m, "content": pii.redact(m["content"], kinds) if isinstance(m.get("content"), str) else m.get("content")}
    if m.get("tool_calls"):
        out["tool_calls"] = json.loads(pii.redact(json.dumps(m["tool_calls"], ensure_ascii=False), kinds))
    return out


def _redact_record(rec: dict, kinds) -> dict:
    if "messages" in rec:
        return {**rec, "messages": [_redact_message(m, kinds) for m in rec["messages"]]}
    return {**rec, "prompt": [_redact_message(m, kinds) for m in rec["prompt"]],
            "chosen": _redact_message(rec["chosen"], kinds), "rejected": _redact_message(rec["rejected"], kinds)}


def eval_sets(records: list[dict], general_files, holdout_file, eval_fraction, seed) -> tuple[list[str], np.ndarray]:
    """(eval prompts, mask of the SFT records prepare will hold out), for the leakage suite."""
    from tasks.ingest import convert_row, read_rows
    from tasks.prepare import is_eval_row

    general = {str(f) for f in general_files}
    is_eval = np.array([eval_fraction is not None and r["source"]["file"] not in general
                        and is_eval_row(r["messages"], seed, eval_fraction) for r in records], dtype=bool)
    prompts = [leakage.prompt_text(r) for r, e in zip(records, is_eval) if e]
    if holdout_file:
        for _, row, err in read_rows(Path(holdout_file)):
            if err is None:
                kind, rec = convert_row(row)
                if kind == "sft":
                    prompts.append(leakage.prompt_text(rec))
    return prompts, is_eval


def check_rows(
    kind: str,
    records: list[dict],
    ingest_rejected: list[dict],
    gx: GxRun,
    thresholds,
    policies: dict[str, str],
    checks: ChecksConfig,
    tokenizer=None,
    max_length: int | None = None,
    eval_prompts: list[str] | None = None,
    is_eval: np.ndarray | None = None,
    only: set[str] | None = None,
) -> dict:
    """Run every suite (or those in `only`) for one kind of row (sft or preference); return flags, details, summaries."""
    n, n_bad = len(records), len(ingest_rejected)
    prefix = "" if kind == "sft" else "preference_"
    seconds, summaries, frames = {}, [], []
    details: list[dict[str, str]] = [{} for _ in range(n)] + [
        {r.get("rule", "format_invalid_json"): r["reasons"][0].split(": ", 1)[-1]} for r in ingest_rejected]
    start = time.perf_counter()
    view = TextView.of(records)
    seconds["text"] = time.perf_counter() - start

    def wanted(suite: str) -> bool:
        return only is None or suite in only

    def run(suite: str, rules: dict[str, str], detected: tuple) -> None:
        frame, suite_details = detected[0], detected[1]
        if n_bad and suite != "format":
            frame = pd.concat([frame, pd.DataFrame(False, index=range(n_bad), columns=frame.columns)], ignore_index=True)
        frame = frame.reset_index(drop=True)
        for i in np.flatnonzero(frame.to_numpy().any(axis=1)):  # only flagged rows have details to merge
            details[i].update(suite_details[i])
        frames.append(frame)
        started = time.perf_counter()
        summary = gx.suite(prefix + suite, frame, rules, thresholds(rules))
        summaries.append({**summary, "data": kind})
        seconds[f"{suite} (GE)"] = time.perf_counter() - started

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - started
        return out

    if wanted("format"):  # unreadable rows count here, so it always runs when rows failed at ingest
        _, fmt_details = timed("format", format_check.detect, records, view)
    else:
        fmt_details = [{} for _ in range(n)]
    bad_details = details[n:]
    if wanted("format") or n_bad:
        run("format", format_check.RULES, (format_check.flag_frame(fmt_details + bad_details, format_check.RULES),
                                           fmt_details + bad_details))
    length_info = None
    if tokenizer is not None and max_length and wanted("length"):
        frame, d, length_info = timed("length", length.detect, records, tokenizer, max_length, view)
        run("length", length.RULES, (frame, d))
    if wanted("duplicates"):
        run("duplicates", duplicates.RULES, timed(
            "duplicates", duplicates.detect, records, view, checks.near_duplicate_threshold, checks.minhash_num_perm,
            checks.shingle_words))
    pii_frame, pii_details = timed("pii", pii.detect, records, view) if wanted("pii") else (
        pd.DataFrame({c: np.zeros(n, dtype=bool) for c in pii.RULES}), [{} for _ in range(n)])
    redact_types = [t for t in pii.TYPES if policies[t] == "redact"]
    redacted = {t: int(pii_frame[f"pii_{t.lower()}"].sum()) for t in redact_types}
    redacted_rows = pii_frame[[f"pii_{t.lower()}" for t in redact_types]].any(axis=1).to_numpy() if redact_types \
        else np.zeros(n, dtype=bool)
    for t in redact_types:  # redacted values are kept, so they are not failures; they are counted instead
        column = f"pii_{t.lower()}"
        for i in np.flatnonzero(pii_frame[column].to_numpy()):
            pii_details[i].pop(column, None)
        pii_frame[column] = False
    if wanted("pii"):
        run("pii", pii.RULES, (pii_frame, pii_details))
    if eval_prompts is not None and wanted("leakage"):
        run("leakage", leakage.RULES, timed("leakage", leakage.detect, records, eval_prompts, is_eval,
                                            checks.leakage_ngram, view))
    if kind == "preference" and wanted("preference"):
        run("preference", preference.RULES, timed("preference", preference.detect, records))
    flags = pd.concat(frames, axis=1) if frames else pd.DataFrame(index=range(n + n_bad))
    return {"flags": flags, "details": details, "summaries": summaries, "seconds": seconds,
            "redact_types": redact_types, "redacted": redacted, "redacted_rows": redacted_rows, "length": length_info}


def _examples(records, ingest_rejected, details, limit: int = 3) -> dict[str, list[dict]]:
    """Per rule, the first few failing rows: where, why, and a PII-redacted excerpt."""
    examples: dict[str, list[dict]] = {}
    rows = records + ingest_rejected
    for i, row_details in enumerate(details):
        for rule, reason in row_details.items():
            found = examples.setdefault(rule, [])
            if len(found) < limit:
                row = rows[i]
                body = row.get("row") if i >= len(records) else {k: v for k, v in row.items() if k not in ("id", "source")}
                found.append({"where": f"{row['source']['file']}:{row['source']['line']}", "reason": reason,
                              "excerpt": _excerpt(body)})
    return examples


def validate_records(
    records_path: Path,
    ingest_rejected_path: Path | None,
    out_dir: Path,
    max_fraction: float = 0.2,
    pii_policy: str = "reject",
    *,
    preferences_path: Path | None = None,
    checks: ChecksConfig | None = None,
    tokenizer=None,
    max_length: int | None = None,
    general_files: list[str] = (),
    general_holdout_file: str | None = None,
    eval_fraction: float | None = None,
    split_seed: int = 0,
    data_docs: bool = True,
    only: set[str] | None = None,
) -> dict:
    """Check every record; write clean/quarantine/report files and Data Docs; return the report.

    Length runs when a tokenizer and max_length are given; leakage when an eval split or a holdout file is.
    The garbage collector is paused meanwhile: the stage builds millions of small dicts and no cycles,
    and collections triggered by those allocations cost more than the checks (3x on reading alone).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _validate_records(records_path, ingest_rejected_path, out_dir, max_fraction, pii_policy,
                                 preferences_path, checks, tokenizer, max_length, general_files,
                                 general_holdout_file, eval_fraction, split_seed, data_docs, only)
    finally:
        if gc_was_enabled:
            gc.enable()


def _validate_records(records_path, ingest_rejected_path, out_dir, max_fraction, pii_policy, preferences_path,
                      checks, tokenizer, max_length, general_files, general_holdout_file, eval_fraction, split_seed,
                      data_docs, only) -> dict:
    started = time.perf_counter()
    checks = checks or ChecksConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    records, preferences = _read_jsonl(records_path), _read_jsonl(preferences_path)
    rejected = _read_jsonl(ingest_rejected_path)
    rejected_sft = [r for r in rejected if r.get("kind", "sft") == "sft"]
    rejected_pref = [r for r in rejected if r.get("kind") == "preference"]
    read_seconds = time.perf_counter() - started

    def thresholds(rules):
        return {rule: checks.max_fraction.get(rule, max_fraction) for rule in rules}

    policies = {t: checks.pii_policies.get(t, pii_policy) for t in pii.TYPES}
    gx = GxRun(out_dir / "data_docs" if data_docs else None)
    leakage_on = eval_fraction is not None or general_holdout_file is not None
    eval_prompts, is_eval = (eval_sets(records, general_files, general_holdout_file, eval_fraction, split_seed)
                             if leakage_on else (None, None))
    common = dict(gx=gx, thresholds=thresholds, policies=policies, checks=checks, tokenizer=tokenizer,
                  max_length=max_length, eval_prompts=eval_prompts, only=only)
    sft = check_rows("sft", records, rejected_sft, is_eval=is_eval, **common)
    pref = check_rows("preference", preferences, rejected_pref, **common) if preferences or rejected_pref else None

    write_started = time.perf_counter()
    paths = {name: out_dir / f"{name}.jsonl" for name in ("clean", "clean_preferences", "quarantine")}
    kept = {"sft": 0, "preference": 0}
    with paths["quarantine"].open("wb") as q, paths["clean"].open("wb") as c, paths["clean_preferences"].open("wb") as cp:
        for kind, rows, bad, result, out in (("sft", records, rejected_sft, sft, c), ("preference", preferences,
                                                                                        rejected_pref, pref, cp)):
            if result is None:
                continue
            for row in bad:
                q.write(orjson.dumps(row) + b"\n")
            rejected_mask = result["flags"].any(axis=1).to_numpy()[: len(rows)]
            for i in np.flatnonzero(rejected_mask):
                reasons = [f"{rule}: {text}" for rule, text in result["details"][i].items()]
                q.write(orjson.dumps({"source": rows[i]["source"], "kind": kind, "reasons": reasons, "row": rows[i]}) + b"\n")
            redact = result["redacted_rows"]
            for i in np.flatnonzero(~rejected_mask):
                rec = _redact_record(rows[i], result["redact_types"]) if redact[i] else rows[i]
                out.write(orjson.dumps(rec) + b"\n")
            kept[kind] = int((~rejected_mask).sum())
    write_seconds = time.perf_counter() - write_started

    docs = gx.build_docs()
    suites = sft["summaries"] + (pref["summaries"] if pref else [])
    report = {
        "rows_in": len(records) + len(rejected_sft),
        "ingest_rejected": len(rejected_sft),
        "rows_kept": kept["sft"],
        "rows_quarantined": len(records) + len(rejected_sft) - kept["sft"],
        "rule_counts": {col: int(sft["flags"][col].sum()) for col in sft["flags"].columns},
        "pii_redacted": sft["redacted"],
        "pii_redacted_rows": int(sft["redacted_rows"].sum()),
        "preferences_in": len(preferences) + len(rejected_pref),
        "preferences_kept": kept["preference"],
        "preferences_quarantined": len(preferences) + len(rejected_pref) - kept["preference"],
        "preference_rule_counts": {col: int(pref["flags"][col].sum()) for col in pref["flags"].columns} if pref else {},
        "preference_pii_redacted": pref["redacted"] if pref else {},
        "thresholds": thresholds(sorted({r["rule"] for s in suites for r in s["rules"]})),
        "pii_policies": policies,
        "length": sft["length"],
        "leakage": {"eval_prompts": len(eval_prompts)} if eval_prompts is not None else "skipped: no eval sets given",
        "suites": suites,
        "success": all(s["success"] for s in suites),
        "examples": {
            **_examples(records, rejected_sft, sft["details"]),
            **({f"preference/{k}": v for k, v in _examples(preferences, rejected_pref, pref["details"]).items()}
               if pref else {}),
        },
        "clean": str(paths["clean"]),
        "clean_preferences": str(paths["clean_preferences"]),
        "quarantine": str(paths["quarantine"]),
        "data_docs": docs,
        "seconds": {"read": read_seconds, **sft["seconds"], **({f"preference {k}": v for k, v in pref["seconds"].items()}
                                                             if pref else {}), "write": write_seconds,
                    "total": time.perf_counter() - started},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def failure_message(report: dict) -> str:
    lines = []
    for suite in report["suites"]:
        key = "" if suite.get("data", "sft") == "sft" else "preference/"
        for rule in suite["rules"]:
            if not rule["success"]:
                where = ", ".join(e["where"] for e in report["examples"].get(key + rule["rule"], []))
                lines.append(
                    f"  {key}{rule['rule']} ({rule['description']}): {rule['failed_rows']} rows = "
                    f"{rule['failed_fraction']:.1%} > allowed {rule['max_fraction']:.1%}; e.g. {where}"
                )
    return "Data validation failed:\n" + "\n".join(lines) + f"\nEvery rejected row and its reasons: {report['quarantine']}"


def report_markdown(report: dict) -> str:
    rows = [
        f"| {s.get('data', 'sft')} | {s['suite']} | {r['rule']} | {r['failed_rows']} | {r['failed_fraction']:.2%} | "
        f"{r['max_fraction']:.0%} | {'pass' if r['success'] else '**FAIL**'} |"
        for s in report["suites"]
        for r in s["rules"]
    ]
    redacted = ", ".join(f"{k} {v}" for k, v in report["pii_redacted"].items() if v) or "none"
    return "\n".join(
        [
            f"# Data validation: {'passed' if report['success'] else 'FAILED'}",
            f"Rows in: {report['rows_in']}, kept: {report['rows_kept']}, quarantined: {report['rows_quarantined']} "
            f"(unreadable at ingest: {report['ingest_rejected']}). Preference pairs in: {report['preferences_in']}, "
            f"kept: {report['preferences_kept']}. PII redacted: {redacted}.",
            f"Length: {report['length']['method'] if report['length'] else 'skipped (no tokenizer)'}. "
            f"Data Docs: {report['data_docs']}",
            "",
            "| data | suite | rule | failed rows | fraction | allowed | verdict |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


@task(cache_policy=STAGE_CACHE, persist_result=True)
def validate(
    ingested: dict,
    out_dir: str,
    max_fraction: float = 0.2,
    pii_policy: str = "reject",
    checks: ChecksConfig | None = None,
    base_model: str | None = None,
    max_length: int | None = None,
    general_files: list[str] = (),
    general_holdout_file: str | None = None,
    eval_fraction: float | None = None,
    split_seed: int = 0,
    trust_remote_code: bool = False,
) -> dict:
    """Run the GE suites; quarantine failing rows; fail when a rule crosses its threshold."""
    tokenizer = None
    if base_model:
        from tasks.prepare import load_chat_tokenizer
        from tunegate.models import resolve_base_model

        tokenizer = load_chat_tokenizer(resolve_base_model(base_model), trust_remote_code)
    report = validate_records(
        Path(ingested["records"]), Path(ingested["rejected"]), Path(out_dir), max_fraction, pii_policy,
        preferences_path=Path(ingested["preferences"]) if ingested.get("preferences") else None, checks=checks,
        tokenizer=tokenizer, max_length=max_length, general_files=list(general_files),
        general_holdout_file=general_holdout_file, eval_fraction=eval_fraction, split_seed=split_seed,
    )
    create_markdown_artifact(markdown=report_markdown(report), key="data-validation", description="Data checks")
    if not report["success"]:
        raise DataValidationError(failure_message(report))
    return report


if __name__ == "__main__":
    from tasks.ingest import ingest_files

    work = Path(tempfile.mkdtemp(prefix="tunegate-validate-"))
    ingested = ingest_files(sys.argv[1:], work)
    rep = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), work, 0.2, "reject",
                           preferences_path=Path(ingested["preferences"]))
    print(report_markdown(rep))
    print(f"\nquarantine: {rep['quarantine']}")
    sys.exit(0 if rep["success"] else 1)
