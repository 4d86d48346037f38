"""Stage 2, validate: run the data_checks suites, quarantine failing rows, fail past per-rule thresholds.

    python -m tasks.validate data/demo/identity.json data/demo/alpaca_general.json

Suites, one concern each (data_checks/): format, length, duplicates, pii, leakage, and for
preference pairs also preference. Detectors compute boolean columns over all rows at once, then
GE asserts each rule's failing share against its threshold (`data.checks.max_fraction`, default
`data.max_rejected_fraction`).

Outputs, in the stage folder:
- clean.jsonl: SFT rows that passed (PII redacted where that type's policy is redact);
- clean_preferences.jsonl: preference pairs that passed (empty when there are none);
- quarantine.jsonl: every rejected row with its reasons and source file:line, PII redacted (every type);
- data_docs/index.html: GE Data Docs of every suite;
- report.json: counts per rule, examples as file:line + reason + a PII-redacted excerpt, and no
  other row content, so it is safe to log to MLflow and Prefect; blank input lines counted with their lines.

The length suite always runs: with the base model's tokenizer when there is one, else with a byte
bound (data_checks/length.py: detect_bytes), which the report's `length.method` names.

The train/eval split is decided here, once (data_checks/split.py: stratified by source file and
language): the leakage suite needs it, and every clean SFT row carries it (`split`, `stratum`) to
prepare, which only reads it.

The contradiction suite compares new rows (feedback, general data) with the curated domain rows.
When more than `checks.conflict_max_fraction` of the window conflicts, the stage raises
`ConflictReviewRequired` before anything trains, naming the top conflicting prompts; a reviewer
approves with `data.checks.conflicts_approved`, and the conflicting rows then train.

The rater suite (data_checks/raters.py) runs when `data.feedback_ratings_file` names the window's
ratings: Krippendorff's alpha, each user's agreement with the other raters, the reward model and the
references (the curated rows and the production set, as above), and the flagged raters. A feedback
row that came only from flagged raters is quarantined as `rater_outlier`; when more than
`checks.rater_max_fraction` of the window is, the stage stops for review exactly as for conflicts
(`ConflictReviewRequired`, approved the same way, and the approved rows then train). The numbers go
in the report's `raters` section and, through `Validated.rater_metrics`, on the MLflow run.
"""

from __future__ import annotations

import functools
import gc
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from data_checks import (check_rule_names, contradiction, duplicates, format as format_check, leakage, length, pii,
                         preference, raters)
from data_checks.facts import FactIndex
from data_checks.split import eval_split
from data_checks.gx_suite import GxRun
from data_checks.text import TextView
from tasks.ingest import Ingested, convert_row, ingest_files, read_rows
from tunegate.caching import STAGE_CACHE
from tunegate.config import ChecksConfig, DataConfig
from tunegate.models import ResolvedModel


CONFLICT_RULES = ("conflicts_with_curated", "conflicts_with_production")
REVIEW_RULES = (*CONFLICT_RULES, "rater_outlier")  # past their share a reviewer decides, and may approve


class DataValidationError(RuntimeError):
    """Raised when a rule's failure fraction crosses its threshold."""


class ConflictReviewRequired(DataValidationError):
    """Too much of the window contradicts curated data: a reviewer must approve it before it trains."""


def _read_jsonl(path: Path | None) -> list[dict]:
    if path is None or not Path(path).exists():
        return []
    with Path(path).open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def _excerpt(value, limit: int = 160) -> str:
    """A short, PII-redacted look at a row for the report: redacted first, then cut."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return pii.redact(text[:4000])[:limit]


def _redact_record(rec: dict, kinds) -> dict:
    """Every string of the record redacted (tool-call arguments too), `pii_redacted` dropped: clean rows stay canonical."""
    return {k: v if k in ("id", "source") else pii.redact_value(v, kinds) for k, v in rec.items() if k != "pii_redacted"}


def files(rows: list[dict], names: list[str]) -> np.ndarray:
    """Which rows come from one of the named files."""
    wanted = set(map(str, names))
    return np.fromiter((r["source"]["file"] in wanted for r in rows), dtype=bool, count=len(rows))


def feedback_lines(rows: list[dict], names: list[str]) -> list[dict | None]:
    """Each row's line as the feedback stage wrote it (with its `feedback_sources`; ingest drops that key), None
    for a row from any other file."""
    lines: dict[tuple[str, int], bytes] = {}
    for name in names:
        if Path(name).exists():
            with Path(name).open("rb") as f:
                lines.update(((str(name), i), line) for i, line in enumerate(f, 1))
    keys = [(r["source"]["file"], r["source"]["line"]) for r in rows]
    return [orjson.loads(lines[k]) if k in lines else None for k in keys]


def holdout_records(holdout_file: str | None) -> list[dict]:
    """The general holdout file as canonical SFT records (its prompts feed leakage, its answers the fact index)."""

    records = []
    if holdout_file:
        for _, row, err in read_rows(Path(holdout_file)):
            if err is None:
                kind, rec = convert_row(row)
                if kind == "sft":
                    records.append(rec)
    return records


def fact_index(records: list[dict], curated: np.ndarray, background: np.ndarray, holdout: list[dict],
               limit: int = 20_000) -> FactIndex:
    """Key-fact statistics: curated answers against trusted background text (general data, never feedback)."""
    answers = [contradiction.answer_text(records[i]) for i in np.flatnonzero(curated)]
    texts = [contradiction.answer_text(records[i]) for i in np.flatnonzero(background)[:limit]]
    texts += [contradiction.answer_text(r) for r in holdout[:limit]]
    return FactIndex.fit(answers, texts)


def conflict_frame(records, references, window, facts, checks, seconds,
                   rule: str = "conflicts_with_curated") -> tuple[pd.DataFrame, tuple]:
    """Run the contradiction detector on the window's rows against references (curated rows, or the production
    set's); the frame covers every row (False outside the window)."""
    started = time.perf_counter()
    rows = np.flatnonzero(window)
    sub, sub_details, conflicts = contradiction.detect([records[i] for i in rows], references, facts,
                                                       checks.conflict_prompt_similarity, checks.conflict_min_fact_share,
                                                       rule)
    flags = np.zeros(len(records), dtype=bool)
    flags[rows] = sub[rule].to_numpy()
    details: list[dict[str, str]] = [{} for _ in records]
    for j, i in enumerate(rows):
        details[i] = sub_details[j]
    for c in conflicts:
        c["row"] = int(rows[c["row"]])
    seconds["contradiction" if rule == "conflicts_with_curated" else rule] = time.perf_counter() - started
    return pd.DataFrame({rule: flags}), (details, conflicts)


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
    curated: list[dict] | None = None,
    production: list[dict] | None = None,
    window: np.ndarray | None = None,
    facts: FactIndex | None = None,
    scanned_at_ingest: bool = False,
    rater_flags: tuple | None = None,
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

    def run(suite: str, rules: dict[str, str], detected: tuple, measured: np.ndarray | None = None) -> None:
        """measured: the rows a rule's share is taken over (GE skips nulls); default every row."""
        frame, suite_details = detected[0], detected[1]
        if n_bad and suite != "format":
            frame = pd.concat([frame, pd.DataFrame(False, index=range(n_bad), columns=frame.columns)], ignore_index=True)
        frame = frame.reset_index(drop=True)
        for i in np.flatnonzero(frame.to_numpy().any(axis=1)):  # only flagged rows have details to merge
            details[i].update(suite_details[i])
        frames.append(frame)
        started = time.perf_counter()
        ge_frame = frame
        if measured is not None:
            ge_frame = frame.astype("boolean")
            ge_frame.loc[~np.concatenate([measured, np.zeros(n_bad, dtype=bool)])] = pd.NA
        summary = gx.suite(prefix + suite, ge_frame, rules, thresholds(rules))
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
    if wanted("length"):  # without a tokenizer: a labelled byte bound, so a 120 KB row never passes unseen
        frame, d, length_info = (timed("length", length.detect, records, tokenizer, max_length, view)
                                 if tokenizer is not None and max_length else
                                 timed("length", length.detect_bytes, records, max_length or length.DEFAULT_MAX_LENGTH,
                                       view))
        run("length", length.RULES, (frame, d))
    if wanted("duplicates"):
        run("duplicates", duplicates.RULES, timed(
            "duplicates", duplicates.detect, records, view, checks.near_duplicate_threshold, checks.minhash_num_perm,
            checks.shingle_words))
    pii_frame, pii_details = timed("pii", pii.detect, records, view, scanned_at_ingest) if wanted("pii") else (
        pd.DataFrame({c: np.zeros(n, dtype=bool) for c in pii.RULES}), [{} for _ in range(n)])
    pii_rows = pii_frame.to_numpy().any(axis=1)
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
    conflicts, conflict_share = [], None
    if curated and facts is not None and checks.contradiction and wanted("contradiction"):
        frame, found = conflict_frame(records, curated, window, facts, checks, seconds)
        conflicts, conflicting = found[1], frame.to_numpy()[:, 0].copy()
        run("contradiction", contradiction.RULES, (frame, found[0]), measured=window)
        if production:  # what users were told before, which no window may rewrite
            frame, found = conflict_frame(records, production, window, facts, checks, seconds,
                                          "conflicts_with_production")
            conflicts, conflicting = conflicts + found[1], conflicting | frame.to_numpy()[:, 0]
            run("production_contradiction", contradiction.PRODUCTION_RULES, (frame, found[0]), measured=window)
        # Both kinds count toward one review threshold: the share of the window that contradicts any reference.
        conflict_share = float(conflicting[window].mean()) if window.any() else None
    rater_share = None
    if rater_flags is not None:  # (flag frame, details) over these rows, from data_checks.raters.detect
        run("raters", raters.RULES, rater_flags, measured=window)
        rater_share = float(rater_flags[0]["rater_outlier"].to_numpy()[window].mean()) if window.any() else None
    flags = pd.concat(frames, axis=1) if frames else pd.DataFrame(index=range(n + n_bad))
    return {"flags": flags, "details": details, "summaries": summaries, "seconds": seconds, "conflicts": conflicts,
            "conflict_share": conflict_share, "rater_share": rater_share,
            "redact_types": redact_types, "redacted": redacted, "redacted_rows": redacted_rows, "pii_rows": pii_rows,
            "length": length_info}


def conflict_summary(sft: dict, pref: dict | None, checks: ChecksConfig, records, preferences, top: int = 5) -> dict:
    """The window's conflicts with curated data, grouped by the curated row they contradict (prompts redacted)."""
    groups: dict[str, dict] = {}
    for result, rows in ((sft, records), (pref, preferences)):
        for c in (result or {}).get("conflicts", []):
            g = groups.setdefault(c["curated"], {"curated": c["curated"], "curated_prompt": _excerpt(c["curated_prompt"], 80),
                                                 "rows": 0, "prompts": [], "dropped": c["dropped"],
                                                 "brought": c["brought"]})
            g["rows"] += 1
            if len(g["prompts"]) < 2:
                src = rows[c["row"]]["source"]
                g["prompts"].append(f"{_excerpt(c['prompt'], 80)!r} ({src['file']}:{src['line']})")
    # Only windows that had rows to measure; a row conflicting with curated data and the production set counts once.
    shares = {kind: r["conflict_share"] for kind, r in (("sft", sft), ("preference", pref))
              if r is not None and r["conflict_share"] is not None}
    return {
        "conflicting_rows": sum(len((r or {}).get("conflicts", [])) for r in (sft, pref)),
        "max_fraction": checks.conflict_max_fraction,
        "shares": shares,
        "review": not checks.conflicts_approved and any(s > checks.conflict_max_fraction for s in shares.values()),
        "approved": checks.conflicts_approved,
        "approved_rows": sum((r or {}).get("approved_conflicts", 0) for r in (sft, pref)),
        "top": sorted(groups.values(), key=lambda g: -g["rows"])[:top],
    }


def rater_summary(agreement: dict | None, sft: dict, pref: dict | None, checks: ChecksConfig) -> dict:
    """The window's rater agreement (data_checks/raters.py) with the share of its rows that only flagged raters
    gave, and whether that share stops the run for review; n/a, with why, when there is nothing to measure."""
    if agreement is None:
        return {"status": "n/a: no ratings file (data.feedback_ratings_file)", "flagged": [], "shares": {},
                "review": False}
    results = (("sft", sft), ("preference", pref))
    shares = {kind: r["rater_share"] for kind, r in results if r is not None and r["rater_share"] is not None}
    judged = agreement["judged"]
    return {
        "status": "measured" if judged >= 2 else f"n/a: {judged} of {len(agreement['users'])} users have "
                  f"{checks.rater_min_ratings}+ comparable ratings; agreement needs two",
        **agreement,
        "flagged_rows": {kind: int(r["flags"]["rater_outlier"].sum()) for kind, r in results
                         if r is not None and "rater_outlier" in r["flags"]},
        "shares": shares,
        "max_fraction": checks.rater_max_fraction,
        "review": not checks.conflicts_approved and any(s > checks.rater_max_fraction for s in shares.values()),
        "approved": checks.conflicts_approved,
        "approved_rows": sum((r or {}).get("approved_raters", 0) for _, r in results),
    }


def rater_metrics(summary: dict) -> dict[str, float]:
    """The rater numbers as MLflow metrics (data/raters/...): alpha when defined, counts, each judged user's
    agreement; user ids are account ids, reduced to the characters a metric name may hold."""
    if "users" not in summary:
        return {}
    metrics = {"users": len(summary["users"]), "judged": summary["judged"], "flagged": len(summary["flagged"]),
               "flagged_rows": sum(summary["flagged_rows"].values()),
               **({"alpha": summary["alpha"]} if summary["alpha"] is not None else {}),
               **({"median_agreement": summary["median_agreement"]} if summary["median_agreement"] is not None else {})}
    for u in summary["users"]:
        if u["judged"]:
            metrics[f"user/{re.sub(r'[^A-Za-z0-9_.-]', '_', u['user'])}/agreement"] = u["combined"]
    return {f"raters/{k}": float(v) for k, v in metrics.items()}


def rater_message(report: dict) -> str:
    r = report["raters"]
    shares = ", ".join(f"{kind} {share:.1%}" for kind, share in r["shares"].items())
    flagged = {u["user"]: u for u in r["users"] if u["flagged"]}
    lines = [f"Rater check: feedback rows that only flagged raters gave are {shares} of the window (allowed "
             f"{r['max_fraction']:.1%}). Nothing was trained on it. Krippendorff's alpha "
             + (f"{r['alpha']:.3f} over {r['alpha_answers']} answers by {r['alpha_raters']} users"
                if r["alpha"] is not None else f"n/a ({r['alpha_why']})")
             + f"; median user's agreement {r['median_agreement']:.2f}, allowed gap {r['max_gap']}. Flagged raters:"]
    for user, u in flagged.items():
        lines.append(f"  {user}: agreement {u['combined']:.2f} on {u['comparable']} ratings ("
                     + "; ".join(f"{k} {u[k]['agreement']:.2f} of {u[k]['n']}" for k in raters.EVIDENCE if u[k]["n"])
                     + ")")
    lines.append("If these raters are trusted, approve the window: data.checks.conflicts_approved='<reviewer>: <reason>' "
                 "(tunegate retrain --approve); their rows then train. Every quarantined row and its reason: "
                 f"{report['quarantine']}")
    return "\n".join(lines)


def review_message(report: dict, failed: set[str]) -> str:
    """Why the window waits for a reviewer: its conflicts, its flagged raters' rows, or both."""
    parts = []
    if report["conflicts"]["review"] or failed & set(CONFLICT_RULES):
        parts.append(conflict_message(report))
    if report["raters"]["review"] or "rater_outlier" in failed:
        parts.append(rater_message(report))
    return "\n\n".join(parts)


def conflict_message(report: dict) -> str:
    c = report["conflicts"]
    shares = ", ".join(f"{kind} {share:.1%}" for kind, share in c["shares"].items())
    lines = [f"Contradiction check: the window conflicts with curated data or the production set ({shares} of its "
             f"rows; allowed {c['max_fraction']:.1%}). Nothing was trained on it. The references contradicted most:"]
    for g in c["top"]:
        lines.append(f"  {g['curated']} {g['curated_prompt']!r}: {g['rows']} rows, e.g. {'; '.join(g['prompts'])}; "
                     f"they drop {g['dropped']}" + (f" and bring {g['brought']}" if g["brought"] else ""))
    lines.append("If this change is intended, approve it: data.checks.conflicts_approved='<reviewer>: <reason>' "
                 "(CLI: --set data.checks.conflicts_approved=...); it is recorded in MLflow. "
                 f"Every conflicting row and its reason: {report['quarantine']}")
    return "\n".join(lines)


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


def file_outcomes(rows: list[dict], ingest_rejected: list[dict], rejected_mask: np.ndarray,
                  details: list[dict[str, str]]) -> dict[str, dict]:
    """Per source file: rows read, rows kept, and how often each rule rejected one of its rows."""
    out: dict[str, dict] = {}
    for i, row in enumerate(rows + ingest_rejected):
        entry = out.setdefault(row["source"]["file"], {"rows": 0, "kept": 0, "rules": {}})
        entry["rows"] += 1
        if i < len(rows) and not rejected_mask[i]:
            entry["kept"] += 1
        else:
            for rule in details[i]:
                entry["rules"][rule] = entry["rules"].get(rule, 0) + 1
    return out


def emptied_files(report: dict, listed: list[str]) -> str | None:
    """A message naming each listed file that had rows and kept none of them; None when every file kept some."""
    lines = [f"  {file}: all {o['rows']} rows quarantined (" + ", ".join(
        f"{rule} {n}" for rule, n in sorted(o["rules"].items(), key=lambda x: -x[1])[:4]) + ")"
             for file in listed if (o := report["files"].get(file)) and o["rows"] and not o["kept"]]
    if not lines:
        return None
    return ("Data validation: nothing of these files survived the checks, so they would train nothing:\n"
            + "\n".join(lines) + f"\nFix or remove them (every row and its reasons: {report['quarantine']}).")


def gc_paused(fn):
    """Run fn with the garbage collector paused: the stage builds millions of small dicts and no
    cycles, and collections triggered by those allocations cost more than the checks (3x on reading alone)."""

    @functools.wraps(fn)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


@gc_paused
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
    general_holdout_file: str | None = None,
    data: DataConfig | None = None,
    data_docs: bool = True,
    only: set[str] | None = None,
    pii_scanned_at_ingest: bool = False,
) -> dict:
    """Check every record; write clean/quarantine/report files and Data Docs; return the report.

    Length runs with the tokenizer when one is given, else on a byte bound; leakage when an eval split or a
    holdout file is. `pii_scanned_at_ingest`: the records are ingest_files' output, whose PII is redacted and
    counted on each row, so the PII suite reads the counts instead of scanning the text again.
    With `data` (the pipeline's data section) the split is decided here and the contradiction suite runs.
    """
    started = time.perf_counter()
    checks = checks or ChecksConfig()
    check_rule_names(checks.max_fraction)
    out_dir.mkdir(parents=True, exist_ok=True)
    records, preferences = _read_jsonl(records_path), _read_jsonl(preferences_path)
    rejected = _read_jsonl(ingest_rejected_path)
    rejected_sft = [r for r in rejected if r.get("kind", "sft") == "sft"]
    blank = [f"{r['source']['file']}:{r['source']['line']}" for r in rejected if r.get("kind") == "blank"]
    rejected_pref = [r for r in rejected if r.get("kind") == "preference"]
    read_seconds = time.perf_counter() - started

    def thresholds(rules):
        review = 1.0 if checks.conflicts_approved else checks.conflict_max_fraction
        defaults = {"conflicts_with_curated": review, "conflicts_with_production": review,
                    "rater_outlier": 1.0 if checks.conflicts_approved else checks.rater_max_fraction}
        return {rule: checks.max_fraction.get(rule, defaults.get(rule, max_fraction)) for rule in rules}

    policies = {t: checks.pii_policies.get(t, pii_policy) for t in pii.TYPES}
    gx = GxRun(out_dir / "data_docs" if data_docs else None)
    holdout = holdout_records(general_holdout_file or (data.general_holdout_file if data else None))
    eval_prompts = [leakage.prompt_text(r) for r in holdout] if general_holdout_file or data else None
    is_eval, strata, coverage, split_seconds = None, [None] * len(records), None, 0.0
    curated, facts, window, pref_window, production = None, None, None, None, None
    if data is not None:
        split_started = time.perf_counter()
        is_eval, strata, coverage = eval_split(records, data.domain_files, data.eval_fraction, data.split_seed,
                                               data.min_eval_per_stratum)
        eval_prompts += [leakage.prompt_text(r) for r, e in zip(records, is_eval) if e]
        split_seconds = time.perf_counter() - split_started
        is_curated = files(records, data.domain_files)
        curated = [r for r, c in zip(records, is_curated) if c]
        facts = fact_index(records, is_curated, files(records, data.general_files), holdout)
        window = files(records, data.feedback_files) if data.feedback_files else ~is_curated
        pref_window = (files(preferences, data.feedback_preference_files) if data.feedback_preference_files
                       else np.ones(len(preferences), dtype=bool))
        if data.production_eval_file:
            production = contradiction.production_references(_read_jsonl(Path(data.production_eval_file)),
                                                              Path(data.production_eval_file).stem)
    common = dict(gx=gx, thresholds=thresholds, policies=policies, checks=checks, tokenizer=tokenizer,
                  max_length=max_length, eval_prompts=eval_prompts, only=only, curated=curated, facts=facts,
                  production=production,
                  scanned_at_ingest=pii_scanned_at_ingest)
    agreement, rater_flags = None, {"sft": None, "preference": None}
    if data is not None and data.feedback_ratings_file and (only is None or "raters" in only):
        started_raters = time.perf_counter()
        ratings = _read_jsonl(Path(data.feedback_ratings_file))
        agreement = raters.rater_agreement(ratings, checks, curated + (production or []), facts)
        rater_flags = {"sft": raters.detect(records, feedback_lines(records, data.feedback_files), ratings, agreement),
                       "preference": raters.detect(preferences, feedback_lines(preferences,
                                                                               data.feedback_preference_files),
                                                   ratings, agreement)}
        raters_seconds = time.perf_counter() - started_raters
    sft = check_rows("sft", records, rejected_sft, is_eval=is_eval, window=window, rater_flags=rater_flags["sft"],
                     **common)
    pref = (check_rows("preference", preferences, rejected_pref, window=pref_window,
                       rater_flags=rater_flags["preference"], **common)
            if preferences or rejected_pref else None)
    for result in (sft, pref):
        for rules, key in ((CONFLICT_RULES, "approved_conflicts"), (("rater_outlier",), "approved_raters")):
            columns = [c for c in rules if result is not None and c in result["flags"]]
            if checks.conflicts_approved and columns:
                result[key] = int(result["flags"][columns].any(axis=1).sum())
                result["flags"][columns] = False  # a reviewer approved them: they train
    if agreement is not None:
        sft["seconds"]["raters"] = raters_seconds

    write_started = time.perf_counter()
    paths = {name: out_dir / f"{name}.jsonl" for name in ("clean", "clean_preferences", "quarantine")}
    kept = {"sft": 0, "preference": 0}
    per_file: dict[str, dict] = {}
    with paths["quarantine"].open("wb") as q, paths["clean"].open("wb") as c, paths["clean_preferences"].open("wb") as cp:
        for kind, rows, bad, result, out in (("sft", records, rejected_sft, sft, c), ("preference", preferences,
                                                                                        rejected_pref, pref, cp)):
            if result is None:
                continue
            for row in bad:  # ingest wrote them redacted; redacting again costs little and covers other writers
                q.write(orjson.dumps({**row, "row": pii.redact_value(row.get("row"))}) + b"\n")
            rejected_mask = result["flags"].any(axis=1).to_numpy()[: len(rows)]
            for i in np.flatnonzero(rejected_mask):
                reasons = [f"{rule}: {text}" for rule, text in result["details"][i].items()]
                row = _redact_record(rows[i], pii.TYPES) if result["pii_rows"][i] else rows[i]  # every type, any policy
                q.write(orjson.dumps({"source": rows[i]["source"], "kind": kind, "reasons": reasons, "row": row}) + b"\n")
            redact = result["redacted_rows"]
            for i in np.flatnonzero(~rejected_mask):
                rec = _redact_record(rows[i], result["redact_types"]) if redact[i] else rows[i]
                if "pii_redacted" in rec:  # ingest redacted every type; only redact-policy types get here
                    rec = {k: v for k, v in rec.items() if k != "pii_redacted"}
                if kind == "sft" and strata[i] is not None:  # the split, decided once, travels with the row
                    rec = {**rec, "split": "eval" if is_eval[i] else "train", "stratum": strata[i],
                           "facts": facts.facts(contradiction.answer_text(rec))}
                out.write(orjson.dumps(rec) + b"\n")
            kept[kind] = int((~rejected_mask).sum())
            per_file.update(file_outcomes(rows, bad, rejected_mask, result["details"]))
    write_seconds = time.perf_counter() - write_started

    docs = gx.build_docs()
    suites = sft["summaries"] + (pref["summaries"] if pref else [])
    report = {
        "rows_in": len(records) + len(rejected_sft),
        "ingest_rejected": len(rejected_sft),
        "blank_lines": {"count": len(blank), "where": blank[:100]},
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
        "split": {"fraction": data.eval_fraction, "seed": data.split_seed, "min_per_stratum": data.min_eval_per_stratum,
                  "strata": coverage} if data is not None else None,
        "conflicts": conflict_summary(sft, pref, checks, records, preferences),
        "raters": rater_summary(agreement, sft, pref, checks),
        "files": per_file,
        "suites": suites,
        "nothing_to_check": [f"{s['data']}/{s['suite']}" for s in suites if s["nothing_to_check"]],
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
                    "split": split_seconds, "total": time.perf_counter() - started},
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


def _fraction(rule: dict) -> str:
    return f"{rule['failed_fraction']:.2%}" if rule["measured_rows"] else "nothing to check"


def report_markdown(report: dict) -> str:
    rows = [
        f"| {s.get('data', 'sft')} | {s['suite']} | {r['rule']} | {r['failed_rows']} | {_fraction(r)} | "
        f"{r['max_fraction']:.0%} | {'pass' if r['success'] else '**FAIL**'} |"
        for s in report["suites"]
        for r in s["rules"]
    ]
    redacted = ", ".join(f"{k} {v}" for k, v in report["pii_redacted"].items() if v) or "none"
    return "\n".join(
        [
            f"# Data validation: {'passed' if report['success'] else 'FAILED'}",
            f"Rows in: {report['rows_in']}, kept: {report['rows_kept']}, quarantined: {report['rows_quarantined']} "
            f"(unreadable at ingest: {report['ingest_rejected']}; blank lines: {report['blank_lines']['count']}"
            + (f", at {', '.join(report['blank_lines']['where'][:10])}" if report["blank_lines"]["count"] else "")
            + f"). Preference pairs in: {report['preferences_in']}, "
            f"kept: {report['preferences_kept']}. PII redacted: {redacted}.",
            f"Length: {report['length']['method'] if report['length'] else 'skipped'}. "
            f"Data Docs: {report['data_docs']}",
            *([f"Nothing to check (no rows to measure): {', '.join(report['nothing_to_check'])}."]
              if report["nothing_to_check"] else []),
            "",
            "| data | suite | rule | failed rows | fraction | allowed | verdict |",
            "|---|---|---|---|---|---|---|",
            *rows,
            *split_markdown(report.get("split")),
            *([f"Conflicts with curated data approved by {report['conflicts']['approved']!r}: "
               f"{report['conflicts']['approved_rows']} rows train."] if report["conflicts"]["approved"] else []),
            "",
            rater_markdown(report["raters"]),
        ]
    )


def rater_markdown(r: dict) -> str:
    """One line on the window's raters: alpha, the median user's agreement, who is flagged and their rows."""
    if "users" not in r:
        return f"Raters: {r['status']}."
    alpha = f"{r['alpha']:.3f} over {r['alpha_answers']} answers" if r["alpha"] is not None else f"n/a ({r['alpha_why']})"
    median = f"{r['median_agreement']:.2f}" if r["median_agreement"] is not None else "n/a"
    flagged = ", ".join(f"{u['user']} ({u['combined']:.2f}, n {u['comparable']})" for u in r["users"] if u["flagged"])
    return (f"Raters: {len(r['users'])} users, {r['judged']} judged ({r['status']}); Krippendorff's alpha {alpha}; "
            f"median user's agreement {median}; flagged: {flagged or 'none'}; their rows quarantined: "
            f"{r['flagged_rows'] or 0}" + (f"; approved by {r['approved']!r}: {r['approved_rows']} rows train"
                                              if r["approved"] else "") + ".")


def split_markdown(split: dict | None) -> list[str]:
    """The eval split's coverage per stratum; strata short of the minimum are called out."""
    if not split:
        return []
    lines = ["", f"Eval split: {split['fraction']:.0%} of each stratum, at least {split['min_per_stratum']} rows.",
             "", "| stratum | rows | eval | train |", "|---|---|---|---|"]
    for s in split["strata"]:
        short = f" (**short of {split['min_per_stratum']}**)" if s["short"] else ""
        lines.append(f"| {s['stratum']} | {s['rows']} | {s['eval']}{short} | {s['train']} |")
    return lines


class Validated(BaseModel):
    """What validate kept and decided: the clean files (rows carry the split), counts, the full report's file."""

    model_config = ConfigDict(extra="forbid")
    clean: str
    clean_preferences: str
    quarantine: str
    report_file: str
    rows_in: int
    rows_kept: int
    rows_quarantined: int
    preferences_kept: int
    rule_counts: dict[str, int]
    success: bool
    conflicts_approved: str | None = None
    conflicts_approved_rows: int = 0
    rater_metrics: dict[str, float] = {}

    @classmethod
    def of(cls, report: dict, report_file: Path) -> Validated:
        return cls(**{k: report[k] for k in ("clean", "clean_preferences", "quarantine", "rows_in", "rows_kept",
                                              "rows_quarantined", "preferences_kept", "rule_counts", "success")},
                   report_file=str(report_file), conflicts_approved=report["conflicts"]["approved"],
                   conflicts_approved_rows=report["conflicts"]["approved_rows"],
                   rater_metrics=rater_metrics(report.get("raters", {})))  # reports from before the rater check


@task(cache_policy=STAGE_CACHE, persist_result=True)
def validate(ingested: Ingested, data: DataConfig, model: ResolvedModel, out_dir: str) -> Validated:
    """Run the GE suites; quarantine failing rows; fail when a rule crosses its threshold."""
    from tunegate.models import load_chat_tokenizer

    report = validate_records(
        Path(ingested.records), Path(ingested.rejected), Path(out_dir), data.max_rejected_fraction, data.pii_policy,
        preferences_path=Path(ingested.preferences), checks=data.checks,
        tokenizer=load_chat_tokenizer(model.path, model.trust_remote_code), max_length=model.max_length, data=data,
        pii_scanned_at_ingest=True,
    )
    create_markdown_artifact(markdown=report_markdown(report), key="data-validation", description="Data checks")
    failed = {r["rule"] for s in report["suites"] for r in s["rules"] if not r["success"]}
    if report["conflicts"]["review"] or report["raters"]["review"] or failed & set(REVIEW_RULES):
        raise ConflictReviewRequired(review_message(report, failed))
    if failed:
        raise DataValidationError(failure_message(report))
    # Files a user listed; a feedback window whose every row is, say, a duplicate is a normal outcome.
    emptied = emptied_files(report, data.domain_files + data.general_files + data.preference_files)
    if emptied:
        raise DataValidationError(emptied)
    return Validated.of(report, Path(out_dir) / "report.json")


if __name__ == "__main__":
    work = Path(tempfile.mkdtemp(prefix="tunegate-validate-"))
    ingested = ingest_files(sys.argv[1:], work)
    rep = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), work, 0.2, "reject",
                           preferences_path=Path(ingested["preferences"]))
    print(report_markdown(rep))
    print(f"\nquarantine: {rep['quarantine']}")
    sys.exit(0 if rep["success"] else 1)
