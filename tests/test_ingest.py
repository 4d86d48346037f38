import json
from pathlib import Path

from tasks.ingest import ingest_files, read_rows, to_messages

from conftest import DEMO


def test_json_array_rows_keep_their_real_line(tmp_path):
    path = DEMO / "identity.json"
    lines = path.read_text().splitlines()
    rows = list(read_rows(path))
    assert len(rows) == len(json.loads(path.read_text())) == 91
    for line, row, err in rows:
        assert err is None
        assert lines[line - 1].strip() == "{"
        assert json.dumps(row["instruction"], ensure_ascii=False)[1:-1] in lines[line]  # the object's first field follows


def test_alpaca_openai_and_sharegpt_become_the_same_messages():
    expected = [{"role": "user", "content": "Add 2+2\nquick"}, {"role": "assistant", "content": "4"}]
    assert to_messages({"instruction": "Add 2+2", "input": "quick", "output": "4"}) == expected
    assert to_messages({"messages": expected}) == expected
    assert to_messages({"conversations": [{"from": "human", "value": "Add 2+2\nquick"},
                                          {"from": "gpt", "value": "4"}]}) == expected
    with_system = to_messages({"instruction": "hi", "input": "", "output": "yo", "system": "be brief"})
    assert with_system[0] == {"role": "system", "content": "be brief"}


def test_bad_lines_are_rejected_with_reasons_and_good_lines_kept(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([
        json.dumps(good),
        '{"messages": [{"role": "user", "content": "cut off',  # truncated line
        json.dumps({"text": "no known format"}),
        json.dumps(["a", "list"]),
        json.dumps(good),
    ]) + "\n")
    out = ingest_files([str(path)], tmp_path / "out")
    records = [json.loads(x) for x in Path(out["records"]).read_text().splitlines()]
    rejected = [json.loads(x) for x in Path(out["rejected"]).read_text().splitlines()]
    assert [r["source"]["line"] for r in records] == [1, 5]
    assert [r["source"]["line"] for r in rejected] == [2, 3, 4]
    assert "invalid JSON" in rejected[0]["reasons"][0]
    assert "unknown format" in rejected[1]["reasons"][0]
    assert "expected an object" in rejected[2]["reasons"][0]
    assert out["counts"]["records"] == 2 and out["counts"]["rejected"] == 3


# ------------------------------------------------------------------ formats, files, corruption

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_checks import pii
from tasks.ingest import convert_row

from conftest import ROOT

LLAMAFACTORY = ROOT / "data" / "llamafactory"


def read_jsonl(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def to_sharegpt(messages):
    """Canonical messages back to ShareGPT turns, for the round trip."""
    names = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}
    turns = []
    for m in messages:
        if m.get("tool_calls"):
            (call,) = m["tool_calls"]
            turns.append({"from": "function_call", "value": call["function"]})
        else:
            turns.append({"from": names[m["role"]], "value": m["content"]})
    return turns


@pytest.mark.parametrize("name,kind,rows", [
    ("alpaca_en_demo.json", "sft", 999), ("identity.json", "sft", 91), ("glaive_toolcall_en_demo.json", "sft", 300),
    ("kto_en_demo.json", "sft", 300), ("dpo_en_demo.json", "preference", 300)])
def test_llamafactory_files_convert_without_loss(tmp_path, name, kind, rows):
    path = LLAMAFACTORY / name
    raw = json.loads(path.read_text())
    source = pii.redact_value(raw)  # ingest writes PII redacted (typed placeholders); everything else survives
    out = ingest_files([str(path)] if kind == "sft" else [], tmp_path,
                       [str(path)] if kind == "preference" else [])
    got = read_jsonl(out["records"] if kind == "sft" else out["preferences"])
    assert out["counts"]["rejected"] == 0 and len(got) == len(source) == rows
    # the vectorised triggers pick every row that per-row redaction changes
    assert out["counts"]["pii_redacted_rows"] == sum(a != b for a, b in zip(raw, source))
    for src, rec in zip(source, got):
        if "instruction" in src:  # alpaca
            user = src["instruction"] + ("\n" + src["input"] if src["input"] else "")
            assert rec["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": src["output"]}]
        elif "tools" in src:  # glaive tool calls: function_call/observation turns and the tools string survive
            turns = [{**t, "value": json.loads(t["value"])} if t["from"] == "function_call" else t
                     for t in src["conversations"]]
            assert to_sharegpt(rec["messages"]) == turns
            assert [t["function"] for t in rec.get("tools", [])] == (json.loads(src["tools"]) if src["tools"] else [])
        elif "label" in src:  # kto
            assert rec["messages"] == src["messages"] and rec["label"] is src["label"]
        else:  # sharegpt preference, some with a system turn
            assert to_sharegpt(rec["prompt"]) == src["conversations"]
            assert to_sharegpt([rec["chosen"]]) == [src["chosen"]] and to_sharegpt([rec["rejected"]]) == [src["rejected"]]


def test_tool_turns_become_what_chat_templates_read():
    row = json.loads((LLAMAFACTORY / "glaive_toolcall_en_demo.json").read_text())[0]
    kind, rec = convert_row(row)
    call = next(m for m in rec["messages"] if m.get("tool_calls"))
    assert kind == "sft" and call["role"] == "assistant" and call["content"] == ""
    assert call["tool_calls"][0] == {"type": "function", "function": {
        "name": "search_recipes", "arguments": {"ingredients": ["chicken", "bell peppers", "rice"]}}}
    assert [m["role"] for m in rec["messages"]][3:6] == ["assistant", "tool", "assistant"]
    assert rec["tools"][0]["type"] == "function" and rec["tools"][0]["function"]["name"] == "search_recipes"


def test_every_format_detected_per_row():
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert convert_row({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                        "system": "s"})[1]["messages"] == [{"role": "system", "content": "s"}, *chat]
    assert convert_row({"prompt": "q", "completion": "a"})[1]["messages"] == chat
    assert convert_row({"prompt": chat[:1], "completion": chat[1:]})[1]["messages"] == chat
    openai = {"messages": [chat[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"}, chat[1]]}
    msgs = convert_row(openai)[1]["messages"]
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"x": 1} and msgs[2]["tool_call_id"] == "c1"
    kind, pref = convert_row({"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert kind == "preference" and pref["chosen"] == {"role": "assistant", "content": "good"}
    kind, pref = convert_row({"input": {"messages": chat[:1]}, "preferred_output": [{"role": "assistant", "content": "g"}],
                              "non_preferred_output": [{"role": "assistant", "content": "b"}]})
    assert kind == "preference" and pref["prompt"] == chat[:1] and pref["rejected"]["content"] == "b"
    implicit = convert_row({"chosen": [chat[0], {"role": "assistant", "content": "g"}],
                            "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]})[1]
    assert implicit["rejected_prompt"] == [{"role": "user", "content": "other"}]  # kept, for the preference suite
    mapped = convert_row({"question": "q", "answer": "a"}, "alpaca", {"instruction": "question", "output": "answer"})
    assert mapped[1]["messages"] == chat


def test_csv_rows_keep_their_start_line_and_parquet_its_row_number(tmp_path):
    path = tmp_path / "data.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "answer"])
        w.writerow(["first", "one line"])
        w.writerow(["second", "two\nlines"])
        w.writerow(["third", "x"])
    out = ingest_files([str(path)], tmp_path / "csv", formats={
        str(path): {"format": "alpaca", "columns": {"instruction": "question", "output": "answer"}}})
    recs = read_jsonl(out["records"])
    assert [r["source"]["line"] for r in recs] == [2, 3, 5]
    assert recs[1]["messages"][1]["content"] == "two\nlines"
    pq.write_table(pa.table({"messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]
                                          for i in range(3)]}), tmp_path / "d.parquet")
    recs = read_jsonl(ingest_files([str(tmp_path / "d.parquet")], tmp_path / "pq")["records"])
    assert [(r["source"]["line"], r["messages"][0]["content"]) for r in recs] == [(1, "q0"), (2, "q1"), (3, "q2")]


def test_corrupted_file_names_a_reason_per_bad_line_and_keeps_every_good_line(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    path = tmp_path / "corrupt.jsonl"
    with path.open("wb") as f:
        f.write(good.encode() + b"\n")
        f.write(b'{"messages": [{"role": "user", "content": "cut\n')  # truncated
        f.write(json.dumps({"instruction": 5, "output": ["x"]}).encode() + b"\n")  # wrong types
        f.write(b"\x89PNG\r\x1a\x00\xff\xfe garbage\n")  # binary
        f.write(b'{"messages": "' + b"x" * (50 * 2**20) + b'"}\n')  # a 50 MB line
        f.write(json.dumps({"messages": [{"role": "user", "content": 3}]}).encode() + b"\n")
        f.write(good.encode() + b"\n")
    out = ingest_files([str(path)], tmp_path / "out")
    assert [r["source"]["line"] for r in read_jsonl(out["records"])] == [1, 7]
    rejected = {r["source"]["line"]: (r["rule"], r["reasons"][0]) for r in read_jsonl(out["rejected"])}
    assert rejected[2][0] == "format_invalid_json" and "Unterminated string" in rejected[2][1]
    assert rejected[3] == ("format_wrong_type", "format_wrong_type: 'instruction' must be a string, got int")
    assert rejected[4][0] == "format_invalid_utf8" and "byte 0 is 0x89" in rejected[4][1]
    assert rejected[5][0] == "format_row_too_large" and "50.0 MB, over the 16 MB limit" in rejected[5][1]
    assert rejected[6] == ("format_wrong_type", "format_wrong_type: message 0: content must be a string, got int")


def test_broken_element_of_a_pretty_printed_array_is_skipped_and_the_rest_kept(tmp_path):
    rows = [{"instruction": f"q{i}", "input": "", "output": "a"} for i in range(4)]
    text = json.dumps(rows, indent=2).replace('"q1",', '"q1" oops,')
    (tmp_path / "a.json").write_text(text)
    out = ingest_files([str(tmp_path / "a.json")], tmp_path / "out")
    kept = [r["messages"][0]["content"] for r in read_jsonl(out["records"])]
    assert kept == ["q0", "q2", "q3"]
    (bad,) = read_jsonl(out["rejected"])
    assert bad["rule"] == "format_invalid_json" and bad["source"]["line"] == 7
