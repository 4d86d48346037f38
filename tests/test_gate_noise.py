"""Seed noise must not block, corrupted training must: a small run of bench/gate_false_blocks.py."""

import pytest

from bench.gate_false_blocks import measure


@pytest.mark.slow
def test_same_data_different_seeds_do_not_block_each_other_but_reversed_answers_do(tmp_path, tiny_model):
    result = measure(n_pairs=2, n_corrupted=1, work=tmp_path)
    assert result["false_block_pairs"] == 0, result["pairs"]
    assert result["corrupted_blocked"] == 1, result["corrupted"]
    for pair in result["pairs"]:  # the seeds do produce different models: the test is not vacuous
        assert pair["b_vs_a"]["bits_per_byte"][0] != 0.0
    assert result["corrupted"][0]["row"]["bits_per_byte"][0] > 0.1
