"""Benchmark: what the contradiction check and the stratified split add to the data stage, on 1M rows.

    python bench/contradiction_cost.py                      # 1,000,000 rows; writes docs/benchmarks.md
    python bench/contradiction_cost.py --rows 50000 --no-write

The rows are bench/data_checks_speed.py's (~300-character chats with planted duplicates, PII and
leaks). 2,000 of them become the curated file; 1,000 window rows are planted contradictions: a
curated prompt whose answer has its numbers swapped (a replaced fact). In the same run, the same
rows are validated twice: as before (no split, no contradiction check: the baseline) and with the
data section that turns both on. The ratio of the two is the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu, write_section  # noqa: E402
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def plant(records: list[dict], n_curated: int, n_conflicts: int) -> int:
    """Mark the first rows curated; copy curated prompts with swapped numbers into the window."""
    for rec in records[:n_curated]:
        rec["source"]["file"] = "curated.jsonl"
    with_numbers = [r for r in records[:n_curated] if re.search(r"\d", r["messages"][-1]["content"])]
    for k in range(n_conflicts):
        src = with_numbers[k % len(with_numbers)]
        target = records[n_curated + 7 * k + 3]
        answer = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), src["messages"][-1]["content"])
        target["messages"] = [*src["messages"][:-1], {"role": "assistant", "content": answer}]
    return n_conflicts


def timed_validate(rec_path: Path, eval_path: Path, out: Path, tokenizer, data=None) -> tuple[float, dict]:
    from tasks.validate import validate_records
    from tunegate.config import ChecksConfig

    checks = ChecksConfig(max_fraction={"duplicates_exact": 0.05, "duplicates_near": 0.05},
                          conflict_max_fraction=0.05)
    data = data.model_copy(update={"checks": checks}) if data is not None else None
    start = time.perf_counter()
    report = validate_records(rec_path, None, out, 0.2, "reject", checks=checks, tokenizer=tokenizer, max_length=512,
                              general_holdout_file=str(eval_path), data=data)
    return time.perf_counter() - start, report


def main() -> None:
    from data_checks_speed import generate

    from tunegate.models import load_chat_tokenizer
    from tunegate.config import DataConfig
    from tunegate.models import build_tiny_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    tokenizer = load_chat_tokenizer(str(build_tiny_model()))
    records, evals, _ = generate(args.rows)
    planted = plant(records, 2000, 1000)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tunegate-bench-") as tmp:
        work = Path(tmp)
        rec_path, eval_path = work / "records.jsonl", work / "evals.jsonl"
        rec_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        eval_path.write_bytes(b"".join(orjson.dumps({"instruction": e, "input": "", "output": "ok"}) + b"\n"
                                       for e in evals))
        del records
        data = DataConfig(domain_files=["curated.jsonl"], general_holdout_file=str(eval_path), eval_fraction=0.1)
        before, _ = timed_validate(rec_path, eval_path, work / "before", tokenizer)
        after, report = timed_validate(rec_path, eval_path, work / "after", tokenizer, data)
    result = {"rows": args.rows, "baseline_s": round(before, 1), "with_checks_s": round(after, 1),
              "ratio": round(after / before, 2), "contradiction_s": round(report["seconds"]["contradiction"], 2),
              "contradiction_ge_s": round(report["seconds"]["contradiction (GE)"], 2),
              "split_s": round(report["seconds"]["split"], 2), "planted": planted,
              "found": report["rule_counts"]["conflicts_with_curated"], "load": [load_before, os.getloadavg()[0]]}
    print(json.dumps(result))
    lines = [
        "## Data stage: the contradiction check and the stratified split",
        "",
        f"Command: `python bench/contradiction_cost.py{'' if args.rows == 1_000_000 else f' --rows {args.rows}'}`. "
        f"CPU: {cpu()}; {os.cpu_count()} cores; load average {result['load'][0]:.1f} before, "
        f"{result['load'][1]:.1f} after.",
        "",
        f"The same {args.rows:,} rows (bench/data_checks_speed.py's), 2,000 of them curated, validated twice in one "
        f"run: as before, and with the split and the contradiction check on.",
        "",
        "| rows | before (s) | with split + contradiction (s) | ratio | contradiction detector (s) | its GE suite (s) "
        "| split (s) | planted conflicts | found |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {args.rows:,} | {result['baseline_s']} | {result['with_checks_s']} | {result['ratio']}x | "
        f"{result['contradiction_s']} | {result['contradiction_ge_s']} | {result['split_s']} | {planted:,} | "
        f"{result['found']:,} |",
        "",
    ]
    if not args.no_write:
        write_section("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
