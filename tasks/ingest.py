"""Stage 1, ingest: dataset files -> canonical chat records that remember their file and line.

    python -m tasks.ingest data/demo/identity.json    # print the first canonical record

Formats, detected per row: Alpaca (instruction/input/output), OpenAI `messages`, ShareGPT
`conversations` (from/value). Files: a JSON array or JSON Lines. A row that cannot be read or
converted is not dropped: it comes back in `rejected` with the reason, for the quarantine file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

from prefect import task

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def read_rows(path: Path) -> Iterator[tuple[int, object | None, str | None]]:
    """Yield (line, row, error) for each row of a JSON array or JSONL file; line is 1-based."""
    text = path.read_text(encoding="utf-8", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("["):
        yield from _read_json_array(text)
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line), None
        except json.JSONDecodeError as err:
            yield line_no, None, f"invalid JSON: {err.msg} at column {err.colno}"


def _read_json_array(text: str) -> Iterator[tuple[int, object | None, str | None]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            row, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            # Without a valid element end the rest of an array cannot be located reliably.
            yield err.lineno, None, f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}; rest of file skipped"
            return
        yield line, row, None
        line += text.count("\n", pos, end)
        pos = end


def to_messages(row: object) -> list[dict]:
    """Convert one row of a known SFT format to chat messages, or raise ValueError naming the problem."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, expected an object")
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
            raise ValueError("'messages' must be a list of {role, content} objects")
        return [{"role": m.get("role"), "content": m.get("content")} for m in msgs]
    if "instruction" in row and "output" in row:
        prompt = row["instruction"] if not row.get("input") else f"{row['instruction']}\n{row['input']}"
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
        if row.get("system"):
            msgs.insert(0, {"role": "system", "content": row["system"]})
        return msgs
    if "conversations" in row:
        turns = row["conversations"]
        if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
            raise ValueError("'conversations' must be a list of {from, value} objects")
        msgs = [{"role": SHAREGPT_ROLES.get(t.get("from"), t.get("from")), "content": t.get("value")} for t in turns]
        if row.get("system"):
            msgs.insert(0, {"role": "system", "content": row["system"]})
        return msgs
    raise ValueError(f"unknown format: keys {sorted(row)[:8]}; expected messages, instruction/output or conversations")


def ingest_files(files: list[str], out_dir: Path) -> dict:
    """Convert every file; write records.jsonl and ingest_rejected.jsonl under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    records_path, rejected_path = out_dir / "records.jsonl", out_dir / "ingest_rejected.jsonl"
    counts = {"records": 0, "rejected": 0, "per_file": {}}
    with records_path.open("w") as rec_out, rejected_path.open("w") as rej_out:
        for file in files:
            path = Path(file)
            if not path.exists():
                raise FileNotFoundError(f"data file not found: {file}")
            kept = 0
            for line, row, error in read_rows(path):
                source = {"file": str(file), "line": line}
                if error is None:
                    try:
                        messages = to_messages(row)
                    except ValueError as err:
                        error = str(err)
                if error is not None:
                    rej_out.write(json.dumps({"source": source, "reasons": [f"ingest: {error}"], "row": row}) + "\n")
                    counts["rejected"] += 1
                    continue
                rec = {"id": f"{path.stem}-{line}", "messages": messages, "source": source}
                rec_out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                kept += 1
            counts["per_file"][str(file)] = kept
            counts["records"] += kept
    return {"records": str(records_path), "rejected": str(rejected_path), "counts": counts}


@task(retries=2, retry_delay_seconds=[2, 5])
def ingest(files: list[str], out_dir: str) -> dict:
    """Read the dataset files into canonical records."""
    return ingest_files(files, Path(out_dir))


if __name__ == "__main__":
    for _, row, err in read_rows(Path(sys.argv[1])):
        print(json.dumps(to_messages(row) if err is None else err, indent=2, ensure_ascii=False))
        break
