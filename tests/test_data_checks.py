import json
from pathlib import Path

import pytest

from data_checks import duplicates, format as format_check, pii
from tasks.validate import failure_message, report_markdown, validate_records


def rec(i, messages):
    return {"id": f"r{i}", "messages": messages, "source": {"file": "data.jsonl", "line": i}}


def chat(user, assistant):
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_format_rules_flag_exactly_the_broken_rows():
    records = [
        rec(1, chat("hi", "hello")),
        rec(2, [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]),
        rec(3, chat("hi", "   ")),
        rec(4, [{"role": "user", "content": "only a question"}]),
        rec(5, []),
        rec(6, [{"role": "system", "content": "s"}] + chat("q", "a")),
    ]
    frame, details = format_check.detect(records)
    assert {k: v for k, v in frame.sum().to_dict().items() if v} == {
        "format_missing_field": 1, "format_unknown_role": 1, "format_empty_content": 1, "format_no_assistant_last": 2}
    assert not frame.iloc[0].any() and not frame.iloc[5].any()
    assert details[1]["format_unknown_role"] == "message 1: role 'bot'"
    assert details[2]["format_empty_content"] == "message 1 (assistant) is empty"


def test_exact_duplicates_ignore_case_and_spaces_and_name_the_first_copy():
    records = [rec(1, chat("Hello  there", "Hi")), rec(2, chat("hello there", "hi ")), rec(3, chat("other", "x"))]
    frame, details = duplicates.detect(records)
    assert frame["duplicates_exact"].tolist() == [False, True, False]
    assert details[1]["duplicates_exact"] == "duplicate of data.jsonl:1"


@pytest.mark.parametrize(
    "text,kind",
    [("write to jane.doe@mailbox.org", "EMAIL"), ("call (555) 123-4567", "PHONE"), ("+44 20 7946 0958", "PHONE"),
     ("555-867-5309 is taken", "PHONE")],
)
def test_pii_is_found_and_redacted_with_a_typed_placeholder(text, kind):
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert frame[f"pii_{kind.lower()}"].item()
    assert f"<{kind}>" in pii.redact(text)


@pytest.mark.parametrize("text", ["In 1990-2000 sales grew", "pi is 3.14159", "1234567 items", "user@localhost"])
def test_pii_ignores_numbers_that_are_not_phones(text):
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert not frame.any(axis=None)


def planted(n_good=40):
    records = [rec(i, chat(f"question {i}", f"answer {i}")) for i in range(1, n_good + 1)]
    records += [
        rec(101, chat("question 1", "answer 1")),  # duplicate of line 1
        rec(102, chat("mail bob@corpmail.de", "sure")),
        rec(103, chat("my phone is 555-123-4567", "noted")),
        rec(104, chat("empty answer", "")),
    ]
    return records


def test_validate_quarantines_bad_rows_with_reasons_and_keeps_the_rest(tmp_path):
    records = write_records(tmp_path / "records.jsonl", planted())
    report = validate_records(records, None, tmp_path, max_fraction=0.2, pii_policy="reject")
    quarantine = [json.loads(x) for x in Path(report["quarantine"]).read_text().splitlines()]
    assert report["success"] and report["rows_kept"] == 40 and report["rows_quarantined"] == 4
    assert {q["source"]["line"]: q["reasons"][0].split(":")[0] for q in quarantine} == {
        101: "duplicates_exact", 102: "pii_email", 103: "pii_phone", 104: "format_empty_content"}
    # The report is what reaches MLflow and Prefect: it must not carry the planted values.
    text = (tmp_path / "report.json").read_text()
    assert "bob@corpmail.de" not in text and "555-123-4567" not in text
    assert report["rule_counts"]["pii_email"] == 1


def test_redact_policy_keeps_pii_rows_with_placeholders(tmp_path):
    records = write_records(tmp_path / "records.jsonl", planted())
    report = validate_records(records, None, tmp_path, max_fraction=0.2, pii_policy="redact")
    clean = Path(report["clean"]).read_text()
    assert report["rows_kept"] == 42 and report["pii_redacted_rows"] == 2
    assert "<EMAIL>" in clean and "<PHONE>" in clean and "bob@corp" not in clean


def test_threshold_failure_names_rule_fraction_and_lines(tmp_path):
    records = [rec(i, chat(f"q{i}", "")) for i in range(1, 4)] + [rec(i, chat(f"q{i}", "a")) for i in range(4, 11)]
    report = validate_records(write_records(tmp_path / "r.jsonl", records), None, tmp_path, 0.2, "reject")
    assert not report["success"]
    message = failure_message(report)
    assert "format_empty_content" in message and "30.0% > allowed 20.0%" in message
    assert "data.jsonl:1, data.jsonl:2, data.jsonl:3" in message


# ------------------------------------------------------------------ every rule, good rows and bad rows

import numpy as np

from data_checks import leakage, length, preference
from data_checks.text import TextView
from tunegate.config import ChecksConfig


def flagged(frame, rule):
    return frame.index[frame[rule]].tolist()


def test_role_order_and_tool_turns():
    call = {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]}
    good = [
        [{"role": "system", "content": "s"}, *chat("q", "a")],
        [{"role": "user", "content": "q"}, call, {"role": "tool", "content": "42"}, {"role": "assistant", "content": "42!"}],
    ]
    bad_order = [
        [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}],
        [*chat("q", "a"), {"role": "system", "content": "late"}, {"role": "assistant", "content": "a"}],
        [{"role": "user", "content": "q"}, {"role": "tool", "content": "stray"}, {"role": "assistant", "content": "a"}],
        [{"role": "assistant", "content": "first"}, *chat("q", "a")],
    ]
    ends_with_call = [[{"role": "user", "content": "q"}, call]]
    frame, details = format_check.detect([rec(i, m) for i, m in enumerate(good + bad_order + ends_with_call)])
    assert flagged(frame, "format_role_order") == [2, 3, 4, 5]
    assert flagged(frame, "format_no_assistant_last") == [6]
    assert not frame.iloc[:2].any(axis=None)  # a tool call may have empty content
    assert details[2]["format_role_order"] == "message 1 is user, expected assistant"


def test_control_characters_and_lone_surrogates_are_flagged():
    frame, details = format_check.detect([rec(1, chat("tab\tand\nnewline are fine", "ok")),
                                          rec(2, chat("bell \x07 here", "ok")), rec(3, chat("c1 \x85", "ok")),
                                          rec(4, chat("half a pair \ud83d", "ok"))])
    assert flagged(frame, "format_control_chars") == [1, 2]
    assert flagged(frame, "format_invalid_utf8") == [3]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from tunegate.models import load_chat_tokenizer

    return load_chat_tokenizer(tiny_model)


def test_length_drops_rows_over_max_and_counts_exact_tokens(tokenizer):
    records = [rec(i, chat(f"question {i}", "word " * n)) for i, n in enumerate([5, 40, 200, 400])]
    frame, details, info = length.detect(records, tokenizer, max_length=128)
    real = [length.token_length(tokenizer, r) for r in records]
    assert flagged(frame, "length_over_max") == [i for i, t in enumerate(real) if t > 128] == [2, 3]
    assert details[3]["length_over_max"] == f"{real[3]} tokens > max_length 128"
    assert info["method"].startswith("byte bound") and info["rows_tokenized"] == 3  # row 0 is under the byte bound


def test_length_tokenizes_every_row_when_the_tokenizer_is_not_byte_level():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tunegate.models import CHATML_TEMPLATE

    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    tok.chat_template = CHATML_TEMPLATE
    frame, _, info = length.detect([rec(1, chat("hi " * 30, "hi")), rec(2, chat("hi", "hi"))], tok, max_length=20)
    assert info == {"method": "tokenized every row", "max_length": 20, "rows_tokenized": 2, "template_failed": 0}
    assert flagged(frame, "length_over_max") == [0]


def test_near_duplicates_are_found_and_different_rows_are_not():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    texts = [" ".join(rng.choice(words, 60)) for _ in range(50)]
    near = texts[3].split()
    near[30] = "changed"
    records = [rec(i, chat(t, "same answer")) for i, t in enumerate(texts)] + [rec(50, chat(" ".join(near), "same answer"))]
    frame, details = duplicates.detect(records, near_threshold=0.8)
    assert flagged(frame, "duplicates_near") == [50] and not frame["duplicates_exact"].any()
    assert details[50]["duplicates_near"] == "near-duplicate of data.jsonl:3"
    strict, _ = duplicates.detect(records, near_threshold=0.99)
    assert not strict["duplicates_near"].any()  # one word in 60 changed: Jaccard about 0.9


def test_one_edit_words_is_where_one_changed_word_keeps_the_threshold():
    words = [f"w{i}" for i in range(60)]
    for n in (1, 2, 3):
        for threshold in (0.8, 0.85, 0.9):
            fewest = duplicates.one_edit_words(n, threshold)
            for w in (fewest - 1, fewest):
                edited = words[:w]
                edited = edited[: w // 2] + ["changed"] + edited[w // 2 + 1 :]
                view = TextView.of_texts([" ".join(words[:w]), " ".join(edited)])
                jaccard = duplicates.shingle_jaccard(view, np.array([0]), np.array([1]), n)[0]
                assert (jaccard >= threshold) == (w == fewest), (n, threshold, w, jaccard)


def short_qa_pairs(seed: int):
    """Questions of 5-12 words with answers of 8-40 words: for each, the answer with one word changed, two words
    changed, and a different answer to the same question."""
    rng = np.random.default_rng(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ten", "ra", "su", "vel", "or", "an", "is") for b in
             ("ment", "ing", "ex", "al", "er", "ou", "pre", "con", "do", "the")] + ["the", "a", "of", "to", "is", "and"]
    p = np.array([1.0] * 100 + [12.0] * 6)  # common words, as in prose
    p /= p.sum()
    out = []
    for _ in range(160):
        q = " ".join(rng.choice(vocab, rng.integers(5, 13), p=p)) + "?"
        answer = list(rng.choice(vocab, rng.integers(8, 41), p=p))
        one, two = list(answer), list(answer)
        one[rng.integers(len(one))] = "zqx"
        for k in rng.choice(len(two), 2, replace=False):
            two[k] = f"zq{k}"
        other = list(rng.choice(vocab, len(answer), p=p))
        out.append((q, " ".join(answer), " ".join(one), " ".join(two), " ".join(other)))
    return out


def test_short_rows_with_one_word_changed_are_near_duplicates_and_other_answers_are_not():
    """Issue 23: 3-word shingles put a ~30-word answer with one word changed near Jaccard 0.82, under 0.85."""
    rows, kinds = [], []
    for q, answer, one, two, other in short_qa_pairs(23):
        for kind, text in (("answer", answer), ("one", one), ("two", two), ("other", other)):
            rows.append(rec(len(rows), chat(q, text)))
            kinds.append((kind, len(q.split()) + len(answer.split())))
    frame, details = duplicates.detect(rows)

    def share(kind, lo, hi):  # flagged share of one kind of row, by the words of the row it was made from
        hits = [f for f, (k, w) in zip(frame["duplicates_near"], kinds) if k == kind and lo <= w < hi]
        return sum(hits) / max(1, len(hits)), len(hits)

    one_short, n_short = share("one", duplicates.one_edit_words(2, 0.85), duplicates.one_edit_words(3, 0.85))
    assert (duplicates.one_edit_words(2, 0.85), duplicates.one_edit_words(3, 0.85)) == (26, 39)
    assert n_short > 50 and one_short >= 0.97, (one_short, n_short)  # under a tenth before issue 23
    assert share("one", 39, 100)[0] >= 0.97
    assert share("other", 0, 100)[0] == 0  # a different answer to the same question
    assert share("two", 0, 100)[0] <= 0.05  # two changed words: 2-word shingles drop under 0.85 up to 46 words
    identity = "I am Gatekeeper, an AI assistant developed by the tunegate team."
    prompts, _ = duplicates.detect([rec(i, chat(q, identity)) for i, q in enumerate(
        ["Who are you?", "Who built you?", "Who created you?", "What are you?"])])
    assert not prompts.any(axis=None)  # under 26 words one word is what a row is about: curated prompts, no copies
    assert not frame["duplicates_exact"].any() and frame["duplicates_near"][[k == "answer" for k, _ in kinds]].sum() == 0
    assert all(details[i]["duplicates_near"] == f"near-duplicate of data.jsonl:{i - 1}"
               for i in range(len(rows)) if kinds[i][0] == "one" and frame["duplicates_near"][i])


def test_minhash_estimates_jaccard():
    a = " ".join(f"t{i}" for i in range(400))
    b = " ".join(f"t{i}" for i in range(100, 500))  # 3-word shingles: Jaccard 297/503 = 0.59
    sig = duplicates.minhash_signatures(TextView.of_texts([a, b]), num_perm=256)
    assert abs((sig[0] == sig[1]).mean() - 297 / 503) < 0.08


@pytest.mark.parametrize("text,kind", [
    ("card 4111 1111 1111 1111", "CREDIT_CARD"), ("iban DE89 3704 0044 0532 0130 00", "IBAN"),
    ("ssn 123-45-6789", "SSN"), ("server 192.168.10.4", "IP_ADDRESS"), ("v6 2001:db8::8a2e:370:7334", "IP_ADDRESS"),
    ("key sk-proj-abcdefghijklmnopqrstuv123", "API_KEY"), ("AKIAIOSFODNN7EXAMPLE", "API_KEY"),
    ("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "API_KEY"), ("secret Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh", "SECRET")])
def test_every_pii_type_is_found_and_redacted(text, kind):
    frame, details = pii.detect([rec(1, chat(text, "ok"))])
    assert [c for c in frame.columns if frame[c].item()] == [f"pii_{kind.lower()}"]
    assert f"<{kind}>" in pii.redact(text)
    assert "4111" not in str(details) and "6789" not in str(details)  # details never carry the value


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112",  # fails Luhn
    "iban DE00 3704 0044 0532 0130 00",  # fails mod 97
    "ssn 000-12-3456", "ip 999.10.1.1", "version 1.2.3", "at 12:30:45",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "internationalization_and_localization"])
def test_pii_checksums_and_entropy_reject_lookalikes(text):
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert not frame.any(axis=None)


def test_leakage_flags_training_rows_that_contain_eval_prompts_only():
    eval_prompts = ["Who are you?", "Explain how the moon causes the tides on the oceans of the earth every day"]
    records = [
        rec(1, chat("who  are YOU?", "I am X")),  # exact, case and spaces ignored
        rec(2, chat("Please explain how the moon causes the tides on the oceans of the earth every day, briefly",
                    "gravity")),  # a 13-word run
        rec(3, chat("Who are you, really?", "I am X")),  # different prompt, same answer: fine
        rec(4, chat("who are you?", "I am X")),  # this one is itself an eval row
    ]
    frame, details = leakage.detect(records, eval_prompts, np.array([False, False, False, True]), ngram=13)
    assert flagged(frame, "leakage_exact") == [0] and flagged(frame, "leakage_ngram") == [1]
    assert details[1]["leakage_ngram"] == "shares a 13-word run with an eval prompt"


def pair(i, chosen, rejected, **extra):
    return {"id": f"p{i}", "prompt": [{"role": "user", "content": "q"}], "chosen": {"role": "assistant", "content": chosen},
            "rejected": {"role": "assistant", "content": rejected}, "source": {"file": "p.jsonl", "line": i}, **extra}


def test_preference_pair_rules():
    records = [pair(1, "good", "bad"), pair(2, "Same  answer", "same answer"), pair(3, "good", ""),
               pair(4, "good", "bad", rejected_prompt=[{"role": "user", "content": "other"}])]
    frame, _ = preference.detect(records)
    assert flagged(frame, "preference_same_answer") == [1]
    assert flagged(frame, "preference_empty_answer") == [2]
    assert flagged(frame, "preference_prompt_mismatch") == [3]
    fmt, _ = format_check.detect([pair(5, "a", "b", prompt=[*chat("q", "a")])])
    assert fmt["format_role_order"].item()  # a prompt must end with the user's turn


def test_per_rule_thresholds_and_per_type_pii_policy(tmp_path):
    records = planted() + [rec(105, chat("reach me at 10.0.0.7", "ok"))]
    checks = ChecksConfig(max_fraction={"pii_email": 0.0}, pii_policies={"IP_ADDRESS": "redact"})
    report = validate_records(write_records(tmp_path / "r.jsonl", records), None, tmp_path, 0.2, "reject",
                              checks=checks)
    failed = [r["rule"] for s in report["suites"] for r in s["rules"] if not r["success"]]
    assert failed == ["pii_email"] and not report["success"]
    assert report["pii_redacted"] == {"IP_ADDRESS": 1} and "<IP_ADDRESS>" in Path(report["clean"]).read_text()
    assert "pii_email (no email in any message): 1 rows = 2.2% > allowed 0.0%; e.g. data.jsonl:102" in failure_message(report)
    with pytest.raises(ValueError, match=r"unknown rules \['pii_emial'\]"):
        validate_records(write_records(tmp_path / "r.jsonl", records), None, tmp_path, 0.2, "reject",
                         checks=ChecksConfig(max_fraction={"pii_emial": 0.0}))


def test_report_has_preferences_data_docs_and_redacted_examples(tmp_path):
    sft = write_records(tmp_path / "r.jsonl", planted())
    prefs = write_records(tmp_path / "p.jsonl", [pair(1, "good", "bad"), pair(2, "same", "same"),
                                                 pair(3, "mail me: bob@corpmail.de", "no")])
    report = validate_records(sft, None, tmp_path / "out", 0.5, "reject", preferences_path=prefs)
    assert report["preferences_in"] == 3 and report["preferences_kept"] == 1
    assert [json.loads(x)["id"] for x in Path(report["clean_preferences"]).read_text().splitlines()] == ["p1"]
    assert report["preference_rule_counts"]["preference_same_answer"] == 1
    assert Path(report["data_docs"]).name == "index.html" and Path(report["data_docs"]).exists()
    docs = "".join(p.read_text(errors="ignore") for p in (tmp_path / "out" / "data_docs").rglob("*.html"))
    assert "pii_email" in docs and "bob@corp" not in docs
    example = report["examples"]["pii_email"][0]
    assert example["where"] == "data.jsonl:102" and "<EMAIL>" in example["excerpt"]
    assert "bob@corp" not in json.dumps(report)


def test_exact_shingle_jaccard_matches_python_sets():
    texts = ["a b c d e f g", "a b c d e f x", "one two", "a b c d e f g a b c"]
    view = TextView.of_texts(texts)

    def shingles(t):
        w = t.split()
        return {tuple(w[i:i + 3]) for i in range(max(1, len(w) - 2))}

    a, b = np.array([0, 0, 2, 3]), np.array([1, 3, 1, 0])
    got = duplicates.shingle_jaccard(view, a, b, 3)
    want = [len(shingles(texts[i]) & shingles(texts[j])) / len(shingles(texts[i]) | shingles(texts[j])) for i, j in zip(a, b)]
    assert np.allclose(got, want) and want[0] == 4 / 6


# ------------------------------------------------------------------ issue 15: recall, look-alikes, no raw PII anywhere

import sys

from conftest import ROOT
from tasks.ingest import ingest_files

PEM_KEY = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx3kPq9Lr2Zt7Wm4Yv8Bn1Cd5Ef6Gh7Ij8Kl9Mn0Op1Qr2St3Uv\n"
           "b2Xy3Za4Bc5De6Fg7Hi8Jk9Lm0No1Pq2Rs3Tu4Vw5Xy6Za7Bc8De9Fg0Hi1Jk2L\nq9Lr2Zt7Wm4Y==\n-----END RSA PRIVATE KEY-----")


@pytest.mark.parametrize("before,value,after,kind", [
    ("Tel. ", "030 12345678", ".", "PHONE"), ("Appelez le ", "01 23 45 67 89", " svp", "PHONE"),
    ("ring ", "+44 (0)20 7946 0958", " today", "PHONE"), ("ring ", "020 7946 0958", ".", "PHONE"),
    ("call ", "+1-415-555-0199x1234", " now", "PHONE"), ("call ", "(415) 555-0199 ext. 12", ".", "PHONE"),
    ("ssn ", "219 09 9999", ".", "SSN"), ("SSN: ", "219099999", "", "SSN"),
    ("IBAN ", "DE89370400440532013000", " BIC COBADEFFXXX", "IBAN"),
    ("IBAN ", "GB82 WEST 1234 5698 7654 32", " BIC NWBKGB2L", "IBAN"),
    ("card ", "4111 1111 1111 1111", " 12/28", "CREDIT_CARD"), ("amex ", "3782-822463-10005", ", exp 01/27", "CREDIT_CARD"),
    ("server ", "203.0.113.77", ".", "IP_ADDRESS"), ("v6 ", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", ".", "IP_ADDRESS"),
    ("aws ", "ASIAY34FZKBOKMUTVV7A", ".", "API_KEY"),
    ("jwt ", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", ".",
     "API_KEY"),
    ("key:\n", PEM_KEY, "\nthanks", "SECRET"),
])
def test_issue_15_misses_are_found_and_redacted_whole(before, value, after, kind):
    text = before + value + after
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert [c for c in frame.columns if frame[c].item()] == [f"pii_{kind.lower()}"]
    assert pii.redact(text) == f"{before}<{kind}>{after}"  # whole value, typed placeholder, the rest untouched


@pytest.mark.parametrize("text", [
    "write to bob@example.com", "see ops@corp.example.org", "mail a@b.test or c@d.invalid", "ping 127.0.0.1.",
    "bind 0.0.0.0:8080", "loopback ::1", "SGVsbG8gd29ybGQsIHRoaXMgaXMgb3JkaW5hcnkgdGV4dA==",
    "/usr/local/lib/python3.11/site-packages/torch/nn/modules/linear.py", "C:/Users/Jane/AppData/Local/Temp/build_2024",
    "version 1.2.3.4", "pip install pkg==10.2.3.4", "ISBN 978-3-16-148410-0", "ISBN 9780306406157",
    "pi is 3.14159265358979323846", "512088 * 137872 = 70602404736", "256626720691 + 1646615806005 = 1903242526696",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "at 2024-12-01 10:30:45"])
def test_issue_15_lookalikes_are_not_pii(text):
    frame, _ = pii.detect([rec(1, chat(text, "ok"))])
    assert not frame.any(axis=None), [c for c in frame.columns if frame[c].item()]


def test_faker_corpus_recall_and_lookalikes():
    """A small draw of bench/pii_corpus.py's corpus (issue-23 forms and families included), on a seed the detector
    was not tuned on: recall >= 99% per type, no look-alike family flagged above 1%."""
    sys.path.insert(0, str(ROOT / "bench"))
    import pii_corpus

    got = pii_corpus.measure(pii, *pii_corpus.corpus(1234, per_type=100, per_family=40, clean=200))
    for kind, row in [*got["per_type"].items(), *got["per_form"].items()]:
        assert row["reject"] / row["n"] >= 0.99 and row["redact"] / row["n"] >= 0.99, (kind, row)
    for family, (n, hit) in got["families"].items():
        assert hit / n <= 0.01, (family, hit, n)
    assert got["clean"][1] / got["clean"][0] <= 0.005


PLANTED = {"EMAIL": "wanda.planted@example-corp.com", "PHONE": "+49 30 98765432", "IBAN": "GB82 WEST 1234 5698 7654 32",
           "CREDIT_CARD": "4539 1488 0343 6467", "SSN": "219-09-9999", "IP_ADDRESS": "203.0.113.77",
           "API_KEY": "ghp_PlantedToken0123456789abcdefGHIJKLMNOP", "SECRET": "Zx9Qw3Er7Ty1Ui5Op2As8Df4Gh"}


def planted_input(path: Path) -> Path:
    rows = [{"instruction": f"question {i}", "input": "", "output": f"answer number {i}"} for i in range(40)]
    for i, value in enumerate(PLANTED.values()):
        rows[5 + i]["output"] += f" Contact: {value}."
    rows[20]["output"] = {"not": "a string", "but": PLANTED["SSN"]}  # rejected at ingest: its excerpt must be redacted
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scan(root: Path) -> dict[str, list[str]]:
    """planted type -> files under root whose bytes hold that value."""
    found = {}
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            for kind, value in PLANTED.items():
                if value.encode() in data:
                    found.setdefault(kind, []).append(p.name)
    return found


@pytest.mark.parametrize("policy,scanned", [("reject", False), ("reject", True), ("redact", True)])
def test_no_planted_value_in_any_file_the_stages_write(tmp_path, policy, scanned):
    """scanned: validate reads ingest's counts (the pipeline's way) instead of scanning the redacted text again."""
    data = planted_input(tmp_path / "input.jsonl")
    out = tmp_path / "run"
    ingested = ingest_files([str(data)], out)
    report = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), out, 0.5, policy,
                              pii_scanned_at_ingest=scanned)
    assert scan(tmp_path) == {k: ["input.jsonl"] for k in PLANTED}  # the scan finds them, in the input only
    assert ingested["counts"]["pii_redacted_rows"] == len(PLANTED)
    quarantine = [json.loads(x) for x in Path(report["quarantine"]).read_text().splitlines()]
    lines = {q["source"]["line"]: q["reasons"] for q in quarantine}
    assert 21 in lines and lines[21][0].startswith("format_wrong_type")
    if policy == "reject":  # every PII row stays out of training, named by file:line and reason, redacted
        assert sorted(lines) == [6, 7, 8, 9, 10, 11, 12, 13, 21]
        assert lines[10] == ["pii_ssn: contains 1 ssn value(s)"]
        row = next(q for q in quarantine if q["source"]["line"] == 6)["row"]
        assert row["messages"][1]["content"] == "answer number 5 Contact: <EMAIL>."
    else:
        clean = Path(report["clean"]).read_text()
        assert sorted(lines) == [21] and report["pii_redacted"] == {t: 1 for t in pii.TYPES}
        assert all(f"Contact: <{t}>." in clean for t in PLANTED) and "pii_redacted" not in clean


def test_blank_lines_are_counted_with_their_lines_and_long_rows_caught_without_a_tokenizer(tmp_path):
    rows = [json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) for i in range(6)]
    rows[3] = json.dumps({"instruction": "long", "input": "", "output": "x" * 120_000})
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(rows[:2] + ["", "   "] + rows[2:4] + [""] + rows[4:]) + "\n")
    ingested = ingest_files([str(data)], tmp_path / "run")
    report = validate_records(Path(ingested["records"]), Path(ingested["rejected"]), tmp_path / "run", 0.5, "reject")
    assert report["blank_lines"] == {"count": 3, "where": [f"{data}:3", f"{data}:4", f"{data}:7"]}
    assert f"blank lines: 3, at {data}:3, {data}:4, {data}:7)" in report_markdown(report)
    assert report["rows_in"] == 6 and report["rule_counts"]["length_over_max"] == 1
    assert report["length"]["method"].startswith("byte bound, no tokenizer: UTF-8 bytes > 8 x max_length 2048")
    quarantine = [json.loads(x) for x in Path(report["quarantine"]).read_text().splitlines()]
    assert [(q["source"]["line"], q["reasons"][0].split(":")[0]) for q in quarantine] == [(6, "length_over_max")]
