"""Benchmark: this checkout's 1M-row data stage against another checkout's, alternating, on one machine.

    git archive main | tar -x -C /tmp/main          # the other checkout, e.g. main before a change
    python bench/data_checks_paired.py /tmp/main --rounds 2

On a shared machine a second run of the same code can take 30% longer than the first, so two checkouts
are timed in turns (other, this, other, this, ...) on the same rows, and the ratio is taken per pair.
Each turn is bench/data_checks_speed.py's 1M-row measurement, run in that checkout with its own code:
ingest's PII redaction of every row (`pii.redact_records`), then `validate_records` on the redacted
rows reading ingest's counts (the validate task's way). Wall and CPU seconds (this process and its
threads) both, since CPU time suffers less from other people's load. Prints one line per turn and a
summary; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from machine import cpu  # noqa: E402

# Run inside a checkout (its root is the working directory): its bench's generator, suite runner and detectors.
TURN = """
import json, os, sys, tempfile, time
from pathlib import Path
sys.path[:0] = [".", "bench"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
from data_checks_speed import generate, run_suite, write_inputs
from data_checks import pii
from tunegate.models import build_tiny_model, load_chat_tokenizer
import orjson
tokenizer = load_chat_tokenizer(str(build_tiny_model()))
with tempfile.TemporaryDirectory() as tmp:  # warm-up, as data_checks_speed.py does: imports, GE's first context
    run_suite(*write_inputs(*generate(2000)[:2], Path(tmp)), Path(tmp) / "out", tokenizer)
records = [orjson.loads(line) for line in open(sys.argv[1], "rb")]
evals = [json.loads(line) for line in open(sys.argv[2])]
load = os.getloadavg()[0]
wall, cpu = time.perf_counter(), time.process_time()
redacted = pii.redact_records(records)
redact = (time.perf_counter() - wall, time.process_time() - cpu)
with tempfile.TemporaryDirectory() as tmp:
    rec_path, eval_path = write_inputs(redacted, evals, Path(tmp))
    del records, redacted
    cpu = time.process_time()
    seconds, report = run_suite(rec_path, eval_path, Path(tmp) / "out", tokenizer, ingested=True)
    validate = (seconds, time.process_time() - cpu)
counts = report["rule_counts"]
print(json.dumps({"validate": validate, "redact": redact, "load": [load, os.getloadavg()[0]],
                  "near": counts["duplicates_near"], "pii": sum(v for k, v in counts.items() if k.startswith("pii_")),
                  "duplicates_stage": report["seconds"]["duplicates"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("other", help="the other checkout's root (e.g. `git archive main` unpacked)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    import orjson
    from data_checks_speed import generate

    records, evals, _ = generate(args.rows)
    with tempfile.TemporaryDirectory(prefix="tunegate-paired-") as tmp:
        rows, prompts = Path(tmp) / "records.jsonl", Path(tmp) / "evals.jsonl"
        rows.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        prompts.write_text("".join(json.dumps(e) + "\n" for e in evals))
        del records
        turns = {"other": [], "this": []}
        for _ in range(args.rounds):
            for name, where in (("other", Path(args.other)), ("this", ROOT)):
                done = subprocess.run([sys.executable, "-c", TURN, str(rows), str(prompts)], cwd=where, check=True,
                                      capture_output=True, text=True)
                turns[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                t = turns[name][-1]
                print(f"{name}: validate {t['validate'][0]:.1f} s (cpu {t['validate'][1]:.1f}), ingest redaction "
                      f"{t['redact'][0]:.1f} s (cpu {t['redact'][1]:.1f}); near {t['near']}, pii {t['pii']}; "
                      f"load {t['load'][0]:.1f} -> {t['load'][1]:.1f}", flush=True)

    def ratios(part: str, index: int, with_redact: bool = False) -> list[float]:
        def total(t):
            return t[part][index] + (t["redact"][index] if with_redact else 0)

        return [total(b) / total(a) for a, b in zip(turns["other"], turns["this"])]

    print(f"\n{args.rows:,} rows, {args.rounds} rounds; this / other per pair:")
    for label, part, index, with_redact in [("validate, wall", "validate", 0, False), ("validate, cpu", "validate", 1, False),
                                            ("validate + ingest redaction, wall", "validate", 0, True),
                                            ("validate + ingest redaction, cpu", "validate", 1, True)]:
        r = ratios(part, index, with_redact)
        print(f"- {label}: " + ", ".join(f"{x:.2f}x" for x in r) + f" (mean {sum(r) / len(r):.2f}x)")
    print(f"CPU: {cpu()}; {os.cpu_count()} cores.")


if __name__ == "__main__":
    main()
