"""Dynamic batching (serve/batching.py): rows decoded together answer as they would alone, each with its settings."""

import json
import threading
import time

import pytest
import torch

from serve.backend import Sampling, load_checkpoint, prompt_ids
from serve.batching import Batcher, Job, decode_batch, held_back
from serve.structured import matcher_for

PROMPTS = ["Give three tips for staying healthy.", "Name a colour.", "What is the capital of France? Explain "
           "how you know, in two sentences.", "Translate 'good morning' into Spanish.", "Write a haiku about rain.",
           "List two prime numbers."]
# Enums: the grammar alone ends the reply, whatever this random-weight model would ramble inside a free string.
SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
          "required": ["answer", "sure"], "additionalProperties": False}


@pytest.fixture(scope="module")
def loaded(tiny_model):
    """The tiny model as serve-model loads a version: it writes varied (if odd) English, so answers differ."""
    return load_checkpoint(tiny_model, "tiny", "1")


def alone(loaded, question: str, max_tokens: int) -> list[int]:
    """The reference: this prompt through plain greedy `model.generate`, with nothing beside it."""
    inputs = prompt_ids(loaded, [{"role": "user", "content": question}])
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def job(loaded, question: str, **sampling) -> Job:
    return Job(loaded, prompt_ids(loaded, [{"role": "user", "content": question}]), Sampling(**sampling))


def test_batched_greedy_answers_equal_unbatched_ones_token_for_token(loaded):
    budgets = [24, 8, 30, 16, 24, 12]  # different prompt lengths (left padding) and budgets in one batch
    jobs = [job(loaded, q, max_tokens=n) for q, n in zip(PROMPTS, budgets)]
    decode_batch(jobs)
    for j, q, n in zip(jobs, PROMPTS, budgets):
        text, tokens, finish = j.result()
        reference = alone(loaded, q, n)
        assert j.ids == reference, q
        assert text == loaded.tokenizer.decode(reference, skip_special_tokens=True) and tokens == len(reference)
        assert finish == ("length" if len(reference) == n and reference[-1] != loaded.tokenizer.eos_token_id
                          else "stop")


def test_a_grammar_row_inside_a_batch_validates_and_leaves_the_others_alone(loaded):
    import jsonschema

    eos = sorted({loaded.tokenizer.eos_token_id, *[loaded.model.generation_config.eos_token_id]} - {None})
    free = [job(loaded, q, max_tokens=20) for q in PROMPTS[:3]]
    constrained = job(loaded, "Is Paris the capital of France? Reply in JSON.", max_tokens=60,
                      matcher=matcher_for("json_schema", SCHEMA, loaded.tokenizer, eos))
    decode_batch([free[0], constrained, free[1], free[2]])
    text, _, finish = constrained.result()
    jsonschema.validate(json.loads(text), SCHEMA)
    assert finish == "stop"  # the grammar ended the reply, not the budget
    for j, q in zip(free, PROMPTS[:3]):
        assert j.ids == alone(loaded, q, 20)  # unconstrained rows of the same batch: as alone


def test_stop_strings_sampling_and_streaming_per_row(loaded):
    reference = loaded.tokenizer.decode(alone(loaded, PROMPTS[0], 24), skip_special_tokens=True)
    words = reference.split()
    stop = " ".join(words[2:4])  # two words from the middle of the greedy answer, as a multi-token stop string
    stopped = job(loaded, PROMPTS[0], max_tokens=24, stop=(stop,))
    greedy = job(loaded, PROMPTS[2], max_tokens=24)
    torch.manual_seed(0)
    sampled = [job(loaded, PROMPTS[2], max_tokens=24, temperature=1.5, top_p=0.95) for _ in range(3)]
    decode_batch([stopped, greedy, *sampled])
    pieces = list(stopped.pieces())
    text = "".join(p for p in pieces if isinstance(p, str))
    assert text == reference[:reference.index(stop)] and pieces[-1][1] == "stop"
    assert all(stop not in "".join(p for p in pieces[:k] if isinstance(p, str)) for k in range(len(pieces)))
    # A greedy row beside sampled rows keeps its argmax answer; the sampled rows differ from it and each other.
    assert greedy.ids == alone(loaded, PROMPTS[2], 24)
    answers = {tuple(s.ids) for s in sampled} | {tuple(greedy.ids)}
    assert len(answers) >= 3


def test_held_back_keeps_what_could_still_become_a_stop_string():
    assert held_back("the answer is END", ("ENDING",)) == "the answer is "
    assert held_back("the answer is EN", ("END", "STOP")) == "the answer is "
    assert held_back("the answer is X", ("END",)) == "the answer is X"
    assert held_back("abc", ()) == "abc"


def test_concurrent_requests_are_decoded_in_one_wave(loaded):
    batcher = Batcher(max_batch=8, wait_s=2.0)
    batcher.last_wave = 6  # as after a full wave: the next one waits (up to 2 s) for six requests
    jobs, barrier = [None] * 6, threading.Barrier(6)

    def submit(i):
        barrier.wait()
        jobs[i] = batcher.submit(loaded, prompt_ids(loaded, [{"role": "user", "content": PROMPTS[i]}]),
                                 Sampling(max_tokens=12))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = [j.result() for j in jobs]
    batcher.stop()
    assert batcher.waves == [6]
    assert [j.ids for j in jobs] == [alone(loaded, q, 12) for q in PROMPTS]
    assert all(r[1] == len(j.ids) for r, j in zip(results, jobs))


# The continuous path (serve/continuous.py): greedy plain requests on transformers' ContinuousBatchingManager,
# the rest on the padded batches above.

def prompt(loaded, question: str) -> dict:
    return prompt_ids(loaded, [{"role": "user", "content": question}])


def continuous_decoder():
    from serve.continuous import ContinuousBatcher

    return ContinuousBatcher(max_batch=8, wait_s=0.05)


def test_continuous_batching_answers_equal_unbatched_greedy_ones_token_for_token(loaded):
    budgets = [24, 8, 30, 16, 24, 12]
    decoder = continuous_decoder()
    first = [decoder.submit(loaded, prompt(loaded, q), Sampling(max_tokens=n))
             for q, n in zip(PROMPTS[:3], budgets[:3])]
    while not first[2].ids:  # the first three are decoding: the others join the running batch
        time.sleep(0.01)
    later = [decoder.submit(loaded, prompt(loaded, q), Sampling(max_tokens=n))
             for q, n in zip(PROMPTS[3:], budgets[3:])]
    results = [j.result() for j in first + later]
    decoder.stop()
    assert decoder.padded.waves == []  # every one went to the manager
    for j, (text, tokens, finish), q, n in zip(first + later, results, PROMPTS, budgets):
        reference = alone(loaded, q, n)
        assert j.ids == reference, q
        assert text == loaded.tokenizer.decode(reference, skip_special_tokens=True) and tokens == len(reference)
        assert finish == ("length" if len(reference) == n and reference[-1] != loaded.tokenizer.eos_token_id
                          else "stop")


def test_beside_continuous_batching_a_grammar_request_validates_and_sampled_ones_sample(loaded):
    import jsonschema

    eos = sorted({loaded.tokenizer.eos_token_id, *[loaded.model.generation_config.eos_token_id]} - {None})
    decoder = continuous_decoder()
    decoder.padded.last_wave = 3  # the grammar and sampled requests wait (up to 50 ms) to share a padded batch
    greedy = [decoder.submit(loaded, prompt(loaded, q), Sampling(max_tokens=20)) for q in PROMPTS[:3]]
    constrained = decoder.submit(loaded, prompt(loaded, "Is Paris the capital of France? Reply in JSON."),
                                 Sampling(max_tokens=60, matcher=matcher_for("json_schema", SCHEMA,
                                                                             loaded.tokenizer, eos)))
    torch.manual_seed(0)
    sampled = [decoder.submit(loaded, prompt(loaded, PROMPTS[2]), Sampling(max_tokens=24, temperature=1.5))
               for _ in range(2)]
    text, _, finish = constrained.result()
    [s.result() for s in sampled]
    [g.result() for g in greedy]
    decoder.stop()
    jsonschema.validate(json.loads(text), SCHEMA)
    assert finish == "stop"
    assert sum(decoder.padded.waves) == 3  # the grammar and the sampled requests took the padded path
    assert [g.ids for g in greedy] == [alone(loaded, q, 20) for q in PROMPTS[:3]]
    assert len({tuple(s.ids) for s in sampled} | {tuple(alone(loaded, PROMPTS[2], 24))}) == 3


def test_continuous_batching_streams_and_stops_at_a_stop_string(loaded):
    reference = loaded.tokenizer.decode(alone(loaded, PROMPTS[0], 24), skip_special_tokens=True)
    stop = " ".join(reference.split()[2:4])
    decoder = continuous_decoder()
    stopped = decoder.submit(loaded, prompt(loaded, PROMPTS[0]), Sampling(max_tokens=24, stop=(stop,)))
    beside = decoder.submit(loaded, prompt(loaded, PROMPTS[2]), Sampling(max_tokens=24))
    pieces = list(stopped.pieces())
    beside.result()
    decoder.stop()
    text = "".join(p for p in pieces if isinstance(p, str))
    assert text == reference[:reference.index(stop)] and pieces[-1][1] == "stop"
    assert len(pieces) > 2  # streamed in several pieces, none of which holds part of the stop string
    assert all(stop not in "".join(p for p in pieces[:k] if isinstance(p, str)) for k in range(len(pieces)))
    assert beside.ids == alone(loaded, PROMPTS[2], 24)


def test_a_version_s_manager_stops_once_the_version_is_dropped(tiny_model, loaded):
    import gc

    decoder = continuous_decoder()
    old = load_checkpoint(tiny_model, "tiny", "2")  # as a follower holds the champion before a promotion
    decoder.submit(old, prompt(old, PROMPTS[1]), Sampling(max_tokens=6)).result()
    manager = decoder.managers[id(old)]
    assert manager.manager.is_running()
    del old  # the follower switched away and the version's last request has ended
    gc.collect()
    manager.thread.join(timeout=30)
    assert not manager.thread.is_alive() and not manager.manager.is_running() and decoder.managers == {}
    # the new version keeps being served
    answer = decoder.submit(loaded, prompt(loaded, PROMPTS[1]), Sampling(max_tokens=6))
    answer.result()
    decoder.stop()
    assert answer.ids == alone(loaded, PROMPTS[1], 6)
