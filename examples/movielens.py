"""Sequences of the shared datasets, the leave-one-out split and ranking metrics.

Shared by `train_movielens.py` and `evaluate.py`. Reads the files in place
(`../shared/data`); nothing of the data is copied into the project.
Protocol (Meta's generative-recommenders, and TIGER's for Amazon): each
user's events in time order; the last item is the test target, the
second-to-last the validation target; histories keep the most recent
`max_len` events. MovieLens has timestamps; the Amazon sequences (S3-Rec's
preprocessing, `beauty`) dropped them, so their events all get time 0 and
HSTU's time bias is one constant there.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FILES = {
    "ml-100k": ("ml-100k/u.data", "\t"),
    "ml-1m": ("ml-1m/ratings.PARTIAL-users-1-2999.dat.gz", "::"),
}
TITLE_FILES = {"ml-100k": ("ml-100k/u.item", "|"), "ml-1m": ("ml-1m/movies.dat", "::")}
# S3-Rec format: one user per line, `user item item ...` in time order.
AMAZON_FILES = {"beauty": "amazon-2014-5core-seq-s3rec/Beauty.txt"}
DATASETS = [*FILES, *AMAZON_FILES]


@dataclass(frozen=True)
class Sequence:
    user: int
    items: list[int]
    times: list[int]


@dataclass(frozen=True)
class Query:
    """One evaluation request: a user's history and the item that came next."""

    user: int
    history: list[int]
    times: list[int]
    target: int
    target_time: int


def load_sequences(dataset: str, data_dir: Path = DATA_DIR) -> list[Sequence]:
    if dataset in AMAZON_FILES:
        sequences = []
        for line in (data_dir / AMAZON_FILES[dataset]).read_text().splitlines():
            user, *items = (int(field) for field in line.split())
            sequences.append(Sequence(user, items, [0] * len(items)))
        return sequences
    path, sep = FILES[dataset]
    opener = gzip.open if path.endswith(".gz") else open
    events: dict[int, list[tuple[int, int]]] = {}
    with opener(data_dir / path, "rt", encoding="latin-1") as lines:
        for line in lines:
            user, item, _rating, time = line.strip().split(sep)
            events.setdefault(int(user), []).append((int(time), int(item)))
    sequences = []
    for user in sorted(events):
        ordered = sorted(events[user], key=lambda e: e[0])  # stable: ties keep order
        sequences.append(
            Sequence(user, [i for _, i in ordered], [t for t, _ in ordered])
        )
    return sequences


def num_items(sequences: list[Sequence]) -> int:
    return max(max(s.items) for s in sequences)


def train_sequences(sequences: list[Sequence], max_len: int) -> list[Sequence]:
    """Everything before the validation item; the last `max_len + 1` events
    (`max_len` inputs, each predicting the next)."""
    return [
        Sequence(s.user, s.items[:-2][-(max_len + 1) :], s.times[:-2][-(max_len + 1) :])
        for s in sequences
        if len(s.items) >= 4
    ]


def queries(sequences: list[Sequence], split: str, max_len: int) -> list[Query]:
    """Validation (target: second-to-last) or test (target: last) queries."""
    end = {"valid": -2, "test": -1}[split]
    out = []
    for s in sequences:
        if len(s.items) < 4:
            continue
        target = len(s.items) + end
        start = max(0, target - max_len)
        out.append(
            Query(
                s.user,
                s.items[start:target],
                s.times[start:target],
                s.items[target],
                s.times[target],
            )
        )
    return out


def item_titles(dataset: str, data_dir: Path = DATA_DIR) -> dict[int, str]:
    path, sep = TITLE_FILES[dataset]
    titles = {}
    with open(data_dir / path, encoding="latin-1") as lines:
        for line in lines:
            fields = line.rstrip("\n").split(sep)
            titles[int(fields[0])] = fields[1]
    return titles


def metrics(ranks: list[int]) -> dict[str, float]:
    """HR@k and NDCG@k for 0-based ranks of the target (one target per query)."""
    out = {}
    for k in (5, 10, 50):
        out[f"HR@{k}"] = sum(r < k for r in ranks) / len(ranks)
        out[f"NDCG@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(
            ranks
        )
    return out
