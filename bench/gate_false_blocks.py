"""Gate false-block rate: candidates trained on the same data with different seeds must not block each other.

    python bench/gate_false_blocks.py --pairs 10 --corrupted 3     # tiny model; ~20 min on 2 busy CPU cores
    python bench/gate_false_blocks.py --config configs/demo.yaml --pairs 2 --corrupted 0   # SmolLM2: ~5-12 min/model

Setup: the demo data is ingested, validated and prepared once for `configs/tiny.yaml`, and its eval
suite is built once. Then, for each pair, two LoRA adapters are trained on the same train split,
differing only in `sft.seed`, and scored on the suite (the same lm-eval code the flow runs, without
the cache). The gate, with the config's rules, judges each member against the other (both
directions): a pair is a false block when either direction blocks. To show the gate is not simply
blind, `--corrupted` candidates trained on reversed answers are judged against the first pair's
first member, and the same pairs are re-judged with every `max_drop` set to 0 (significance alone).
Also reported: each rule's minimal detectable effect, rules whose metric was constant (uninformative),
and the answer drift between seed twins (share of eval answers with token F1 < gate.answer_drift_f1
between the twins' answers): what `gate.max_answer_drift` must leave room for.
Prints a markdown section for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.evaluate import eval_suite, score_task, suite_settings, with_content_hash  # noqa: E402
from tasks.gate import decide  # noqa: E402
from tunegate.config import load_config  # noqa: E402


def prepare_once(params, work: Path) -> dict:
    """The config's data ingested, validated and prepared as the flow's first stages leave it (train.jsonl, ...)."""
    from tasks.ingest import ingest_files
    from tasks.prepare import prepare_data
    from tasks.validate import validate_records
    from tunegate.models import resolve_base_model

    data = params.data
    ingested = ingest_files(data.domain_files + data.general_files, work)
    report = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), work,
                              data.max_rejected_fraction, data.pii_policy, data=data)
    return prepare_data(Path(report["clean"]), data.general_holdout_file, resolve_base_model(params.base_model), work,
                        params.trust_remote_code)


def reversed_answers(train: Path, out: Path) -> Path:
    """The train split with every answer's characters reversed (as tests/test_flow.py corrupts data)."""
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    for row in rows:
        row["completion"][-1]["content"] = row["completion"][-1]["content"][::-1]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out


def train_and_score(label: str, train_file: Path, seed: int, params, prepared: dict, suite: dict, work: Path) -> dict:
    from tasks.sft_training import train_sft

    cfg = params.sft.model_copy(update={"seed": seed})
    trained = train_sft(prepared["base_model_path"], str(train_file), None, cfg, work / label, work / label / "ckpt")
    model = with_content_hash({"label": label, "adapter": trained["adapter"], "model": None, "version": label}, suite)
    tasks = {s["name"]: score_task(model, s, suite["footing"], suite_settings(suite)) for s in suite["tasks"]}
    return {"label": label, "version": label, "tasks": tasks}


def summary_row(decision: dict) -> dict:
    """Per rule (by metric): delta, p-value, verdict, minimal detectable effect."""
    return {r["metric"]: (r["delta"], r["p_value"], r["verdict"], r["mde"]) for r in decision["rows"]}


def measure(n_pairs: int, n_corrupted: int, work: Path, config: str = "configs/tiny.yaml", seed0: int = 100,
            overrides: tuple[str, ...] = ()) -> dict:
    params = load_config(ROOT / config, overrides)
    prepared = prepare_once(params, work / "data")
    suite = eval_suite(prepared, params.eval, params.gate.rules, work / "cache", work / "suite")
    no_threshold = params.gate.model_copy(
        update={"rules": [r.model_copy(update={"max_drop": 0.0}) for r in params.gate.rules]})
    train = Path(prepared["train"])
    pairs, start = [], time.perf_counter()
    for i in range(n_pairs):
        a = train_and_score(f"p{i}a", train, seed0 + 2 * i, params, prepared, suite, work)
        b = train_and_score(f"p{i}b", train, seed0 + 2 * i + 1, params, prepared, suite, work)
        ab, ba = decide(params.gate, b, a), decide(params.gate, a, b)
        pairs.append({
            "seeds": (seed0 + 2 * i, seed0 + 2 * i + 1),
            "b_vs_a": summary_row(ab),
            "answer_drift": ab["answer_drift"]["share"],
            "blocked_directions": (not ab["passed"]) + (not ba["passed"]),
            "blocked_without_threshold": (not decide(no_threshold, b, a)["passed"])
            + (not decide(no_threshold, a, b)["passed"]),
            "first": a if i == 0 else None,
        })
        print(f"pair {i}: {pairs[-1]['b_vs_a']} drift {pairs[-1]['answer_drift']} blocked directions "
              f"{pairs[-1]['blocked_directions']}", flush=True)
    corrupted_file = reversed_answers(train, work / "train_reversed.jsonl")
    corrupted = []
    for j in range(n_corrupted):
        bad = train_and_score(f"bad{j}", corrupted_file, seed0 + 1000 + j, params, prepared, suite, work)
        decision = decide(params.gate, bad, pairs[0]["first"])
        corrupted.append({"row": summary_row(decision), "blocked": not decision["passed"]})
        print(f"corrupted {j}: {corrupted[-1]}", flush=True)
    return {
        "config": config + "".join(f" --set {o}" for o in overrides),
        "rules": [r.model_dump() for r in params.gate.rules],
        "alpha": params.gate.alpha,
        "pairs": [{k: v for k, v in p.items() if k != "first"} for p in pairs],
        "false_block_pairs": sum(p["blocked_directions"] > 0 for p in pairs),
        "blocked_directions": sum(p["blocked_directions"] for p in pairs),
        "false_block_pairs_without_threshold": sum(p["blocked_without_threshold"] > 0 for p in pairs),
        "corrupted_blocked": sum(c["blocked"] for c in corrupted),
        "corrupted": corrupted,
        "uninformative_pairs": {m: sum(p["b_vs_a"][m][2] == "uninformative" for p in pairs)
                                for m in pairs[0]["b_vs_a"]} if pairs else {},
        "max_answer_drift": max((p["answer_drift"] for p in pairs), default=0.0),
        "minutes": round((time.perf_counter() - start) / 60, 1),
    }


def markdown(result: dict, command: str) -> str:
    n = len(result["pairs"])
    rules = ", ".join(f"{r['task']}/{r['metric']} max_drop={r['max_drop']}" for r in result["rules"])
    lines = [
        "## Gate false-block rate",
        "",
        f"Command: `{command}` ({result['minutes']} min on this 2-core CPU, shared).",
        "",
        f"Pairs of candidates trained on the same data with different `sft.seed`, judged against each other in "
        f"both directions with the rules of `{result['config']}` ({rules}; alpha={result['alpha']}).",
        "",
        f"- **False-block rate: {result['false_block_pairs']}/{n} pairs** "
        f"({result['blocked_directions']}/{2 * n} directions).",
        f"- Same pairs with every max_drop set to 0 (significance alone): "
        f"{result['false_block_pairs_without_threshold']}/{n} pairs blocked. The paired test only covers "
        "sampling noise of the eval set; the spread between training seeds is what max_drop absorbs.",
        "- Largest seed-to-seed move: " + ", ".join(
            f"{m} {max(abs(p['b_vs_a'][m][0]) for p in result['pairs']):.4f}" for m in result["pairs"][0]["b_vs_a"])
        + " (against max_drop " + ", ".join(str(r["max_drop"]) for r in result["rules"]) + ").",
        f"- Candidates trained on reversed answers, against the first seed's candidate: "
        f"{result['corrupted_blocked']}/{len(result['corrupted'])} blocked.",
        "- Uninformative (constant over every sample of both twins), pairs out of " + f"{n}: " + ", ".join(
            f"{m} {k}" for m, k in result["uninformative_pairs"].items()) + ".",
        f"- Answer drift between seed twins: at most {result['max_answer_drift']:.1%} of eval answers "
        "(token F1 between the twins' answers < gate.answer_drift_f1); a `gate.max_answer_drift` cap must sit above.",
        "",
        "Cells: delta (p) verdict, MDE (the smallest drop the rule's paired test detects with 80% power there).",
        "",
        "| pair (seeds) | " + " | ".join(f"{m}" for m in result["pairs"][0]["b_vs_a"]) + " | answer drift |",
        "|---|" + "---|" * (len(result["pairs"][0]["b_vs_a"]) + 1),
    ]

    def cells(row: dict) -> list[str]:
        return [f"{d:+.4f} ({pv:.2g}) {v}, MDE {'none' if mde is None else f'{mde:.3f}'}"
                for d, pv, v, mde in row.values()]

    for p in result["pairs"]:
        lines.append(f"| {p['seeds'][0]} vs {p['seeds'][1]} | " + " | ".join(cells(p["b_vs_a"]))
                     + f" | {p['answer_drift']:.1%} |")
    for j, c in enumerate(result["corrupted"]):
        lines.append(f"| reversed answers #{j} vs first | " + " | ".join(cells(c["row"])) + " | |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--corrupted", type=int, default=3)
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--json", help="also write the raw result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gate-false-blocks-") as tmp:
        result = measure(args.pairs, args.corrupted, Path(tmp), args.config, overrides=tuple(args.set))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(markdown(result, "python bench/gate_false_blocks.py " + " ".join(sys.argv[1:])))
