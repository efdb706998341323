"""The example datasets load as their sources describe them."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import pytest  # noqa: E402
from movielens import (  # noqa: E402
    AMAZON_FILES,
    DATA_DIR,
    load_sequences,
    metrics,
    num_items,
    queries,
)


@pytest.mark.skipif(
    not (DATA_DIR / AMAZON_FILES["beauty"]).is_file(),
    reason=f"needs Amazon Beauty at {DATA_DIR} (research-use data, not shipped)",
)
def test_amazon_beauty_has_the_published_counts_and_split():
    # S3-Rec's and TIGER's statistics (../shared/data/.../SOURCE.md).
    sequences = load_sequences("beauty")
    assert len(sequences) == 22_363
    assert num_items(sequences) == 12_101
    assert sum(len(s.items) for s in sequences) == 198_502
    first = sequences[0]
    assert first.user == 1 and first.items == [1, 2, 3, 4, 5]
    test = {q.user: q for q in queries(sequences, "test", 200)}
    valid = {q.user: q for q in queries(sequences, "valid", 200)}
    assert test[1].target == 5 and test[1].history == [1, 2, 3, 4]
    assert valid[1].target == 4 and valid[1].history == [1, 2, 3]


def test_metrics_at_5_10_50():
    scores = metrics([0, 4, 7, 60])
    assert scores["HR@5"] == 0.5 and scores["HR@10"] == 0.75 and scores["HR@50"] == 0.75
    assert abs(scores["NDCG@5"] - (1 + 1 / 2.584962500721156) / 4) < 1e-12
