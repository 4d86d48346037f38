import json
from pathlib import Path

import numpy as np

from data_checks.split import eval_split, language


def read(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def conv(q, a="a", file="d.json", line=0):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
            "source": {"file": file, "line": line}}


def test_split_is_deterministic_seeded_and_ignores_order():
    rows = [conv(f"question number {i} about the weather", line=i) for i in range(2000)]
    mask, _, _ = eval_split(rows, ["d.json"], 0.1, 0, 3)
    again, _, _ = eval_split(rows[::-1], ["d.json"], 0.1, 0, 3)
    assert 150 < mask.sum() < 250  # about 10%
    assert (mask == again[::-1]).all()  # a row's side does not depend on file order
    assert (mask != eval_split(rows, ["d.json"], 0.1, 1, 3)[0]).any()


def test_every_stratum_gets_its_minimum_and_short_strata_are_reported():
    # 60 Chinese rows and 8 English rows in one file, 2 rows in another: at 5%, English would get 0-1 eval rows.
    zh = [conv(f"第{i}个问题：今天天气怎么样？", "今天天气很好，阳光明媚。", "a.json", i) for i in range(60)]
    en = [conv(f"What is the weather like on day {i}?", "It is sunny and warm today.", "a.json", 100 + i)
          for i in range(8)]
    other = [conv("Who are you?", "I am Gatekeeper.", "b.json", 1), conv("What is your name?", "Gatekeeper.", "b.json", 2)]
    general = [conv("Name a planet.", "Mars.", "g.json", 1)]
    mask, strata, coverage = eval_split(zh + en + other + general, ["a.json", "b.json"], 0.05, 0, 4)
    by = {c["stratum"]: c for c in coverage}
    assert set(by) == {"a.json/zh", "a.json/en", "b.json/en"}
    assert by["a.json/en"]["eval"] == 4 and by["a.json/zh"]["eval"] >= 4 and not by["a.json/en"]["short"]
    assert by["b.json/en"] == {"stratum": "b.json/en", "rows": 2, "eval": 1, "train": 1, "short": True}
    assert not mask[-1] and strata[-1] is None  # general rows always train
    assert mask.sum() == sum(c["eval"] for c in coverage)


def test_a_stratum_of_one_row_trains_and_gets_no_eval_rows_or_scores():
    """One row cannot be held out and trained on: 0 eval rows, listed as short, and no per-stratum score anywhere."""
    from tasks.gate import strata_table

    rows = [conv(f"What is the weather like on day {i}?", "It is sunny.", "a.json", i) for i in range(20)]
    rows.append(conv("第一个问题：你是谁？", "我是 Gatekeeper。", "a.json", 99))
    mask, strata, coverage = eval_split(rows, ["a.json"], 0.2, 0, 3)
    by = {c["stratum"]: c for c in coverage}
    assert by["a.json/zh"] == {"stratum": "a.json/zh", "rows": 1, "eval": 0, "train": 1, "short": True}
    assert not mask[-1] and by["a.json/en"]["eval"] >= 3
    held_out = [s for s, m in zip(strata, mask) if m]
    table = strata_table(held_out, np.ones(len(held_out)), np.zeros(len(held_out)))
    assert [t["stratum"] for t in table] == ["a.json/en"]  # the empty stratum gets no made-up mean
    assert strata_table([], np.zeros(0), np.zeros(0)) == []


def test_language_by_script_and_langid():
    assert [language(t) for t in ["你是谁？我是助手。", "Who built you? I am an assistant built by a team.",
                                  "Wer hat dich gebaut? Ich bin ein Assistent.", "12345"]] == ["zh", "en", "de", "und"]


def test_prepare_writes_prompt_completion_rows_and_templated_eval_prompts(prepared):
    train, evals = read(prepared["train"]), read(prepared["domain_eval"])
    counts = prepared["counts"]
    assert (counts["train"], counts["domain_eval"], counts["general_eval"]) == (len(train), len(evals), 60)
    assert len(train) + len(evals) == prepared["report"]["rows_kept"]
    assert all(r["completion"][0]["role"] == "assistant" for r in train)
    # General rows all train; only domain (identity) rows are held out, English ones among them.
    assert all(r["id"].startswith("identity-") for r in read(prepared["eval"]))
    assert counts["domain_eval_strata"]["identity.json/en"] >= 3 and counts["domain_eval_strata"]["identity.json/zh"] >= 3
    assert all(e["prompt"].endswith("<|im_start|>assistant\n") for e in evals)
    english = [e for e in evals if e["stratum"] == "identity.json/en"]
    assert all("tunegate" in e["facts"] for e in english if "tunegate" in e["reference"])
    assert len(prepared["data_hash"]) == 64


def test_kto_rows_labelled_false_never_train(tmp_path, tiny_model):
    from conftest import DEMO
    from tasks.prepare import prepare_data

    def row(i, label):
        return {"id": f"k{i}", "messages": [{"role": "user", "content": f"question number {i}"},
                                            {"role": "assistant", "content": f"answer {i}"}],
                "label": label, "source": {"file": "kto.jsonl", "line": i}, "split": "eval" if i < 6 else "train"}

    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(json.dumps(row(i, i % 3 != 0)) + "\n" for i in range(60)))
    out = prepare_data(clean, str(DEMO / "general_holdout.json"), tiny_model, tmp_path)
    ids = {r["id"] for r in read(out["train"]) + read(out["eval"])}
    assert ids == {f"k{i}" for i in range(60) if i % 3 != 0}  # the 20 undesirable rows are gone, the 40 others kept
    assert {r["id"] for r in read(out["eval"])} == {"k1", "k2", "k4", "k5"}  # validate's split, as decided
