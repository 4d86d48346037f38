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
