"""Train an HSTU over semantic IDs on Amazon Beauty (TIGER's setting).

    cd examples
    python train_movielens.py --dataset beauty --epochs 30 --out ../models/hstu-beauty
    vllm-mtgr semantic-ids ../models/hstu-beauty --attributes \\
        ../../shared/data/amazon-2014-5core-seq-s3rec/Beauty_item2attributes.json
    python train_semantic_ids.py --item-model ../models/hstu-beauty \\
        --report ../benchmarks/results/beauty --out ../models/semantic-beauty
    vllm serve ../models/semantic-beauty     # /pooling: beam search inside

1. Codes: every item has a semantic ID (`vllm-mtgr semantic-ids`: residual
   k-means, 3 levels x 256, then a level that makes each code unique) over
   the item-ID model's embeddings (what users co-consume) beside the items'
   attributes (brand, categories: what an item is). The item-ID model trains
   on the same split, so no test item leaks into a code.
2. Tokens: code token c of level l is `1 + offset[l] + c` (0 pads); a
   history event is its item's code tokens in level order, each with the
   event's time, so HSTU's position and time bias see tokens.
3. Model: the same HSTU as `train_movielens.py` (Meta's parameter names,
   cosine logits over L2-normalised token embeddings at temperature 0.05),
   its "items" the code tokens. Each token predicts the next one, with a
   full softmax over that token's level (at most 256 classes: no sampling).
4. Evaluation: beam search constrained to real items (`vllm_mtgr.layout.code_trie`),
   the user's history excluded, over all items; Recall and NDCG at 5 and 10
   by the rank in the beam's list (TIGER's protocol), best validation
   NDCG@10 kept, then tested.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from itertools import groupby
from pathlib import Path

import torch
import torch.nn.functional as F
from movielens import load_sequences, metrics, num_items, queries, train_sequences
from train_movielens import (
    BATCH,
    TEMPERATURE,
    build_model,
    fit,
    normalize,
    pad,
    save_plot,
    write_model_dir,
)

from vllm_mtgr.converters import semantic_ids
from vllm_mtgr.decoding.beams import excluded_nodes, next_beams
from vllm_mtgr.layout.code_trie import CodeTokens

MAX_ITEMS = 50  # history events kept (TIGER keeps 20)


def expand(items: list[int], times: list[int], vocab: CodeTokens):
    return vocab.tokens(items), [t for t in times for _ in range(vocab.levels)]


def train_epoch(model, data, vocab: CodeTokens, optimizer, rng) -> float:
    model.train()
    order = sorted(data, key=lambda s: len(s.items))
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    rng.shuffle(batches)
    level_mask = vocab.level_mask()
    losses = []
    for batch in batches:
        streams = [expand(s.items, s.times, vocab) for s in batch]
        ids = pad([tokens[:-1] for tokens, _ in streams])
        targets = pad([tokens[1:] for tokens, _ in streams])
        times = pad([t[:-1] for _, t in streams])
        query_times = pad([t[1:] for _, t in streams])
        out = model.encode(ids, times, query_times)
        mask = targets != 0
        goal = targets[mask]
        scores = out[mask] @ normalize(model.item_embeddings()).T / TEMPERATURE
        scores = scores.masked_fill(~level_mask[vocab.level_of(goal)], float("-inf"))
        loss = F.cross_entropy(scores, goal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def beam_ranks(model, batch_queries, vocab: CodeTokens, width: int) -> list[int]:
    """0-based rank of each target in its user's constrained beam list (the
    list's length when the target is not in it); history items excluded."""
    model.eval()
    ranks = []
    by_length = sorted(batch_queries, key=lambda q: len(q.history))
    for _, group in groupby(by_length, key=lambda q: len(q.history)):
        group = list(group)
        for start in range(0, len(group), 256):
            chunk = group[start : start + 256]
            items, scores = beam_lists(model, chunk, vocab, width)
            for row, q in enumerate(chunk):
                found = (items[row][scores[row].isfinite()] == q.target).nonzero()
                ranks.append(int(found[0]) if len(found) else width)
    return ranks


@torch.no_grad()
def beam_lists(
    model, chunk, vocab: CodeTokens, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(items, summed log-probabilities) `[users, width]` each, best first,
    of a constrained beam search per user (`vllm_mtgr.beams.beam_search`
    for every user at once); users of one history length. A user with fewer
    than `width` unseen items has -inf scores at the end of its row."""
    trie, table = vocab.trie, normalize(model.item_embeddings())
    users = len(chunk)
    streams = [expand(q.history, q.times, vocab) for q in chunk]
    history = torch.tensor([tokens for tokens, _ in streams])
    times = torch.tensor([t for _, t in streams])
    target_time = torch.tensor([q.target_time for q in chunk])
    seen = excluded_nodes(trie, [torch.tensor(q.history) for q in chunk])
    nodes = torch.zeros(users, 1, dtype=torch.long)
    scores = torch.zeros(users, 1)
    beam_tokens = torch.zeros(users, 1, 0, dtype=torch.long)
    for depth in range(vocab.levels):
        beams = nodes.shape[1]
        ids = torch.cat([history[:, None].expand(-1, beams, -1), beam_tokens], -1)
        step_times = target_time[:, None].expand(-1, depth)
        key_times = torch.cat([times, step_times], -1)
        query_times = torch.cat([times[:, 1:], target_time[:, None], step_times], -1)
        length = ids.shape[-1]
        out = model.encode(
            ids.reshape(users * beams, length),
            key_times.repeat_interleave(beams, 0),
            query_times.repeat_interleave(beams, 0),
        )[:, -1]
        lo = int(vocab.offsets[depth])
        logits = out @ table[lo : lo + vocab.sizes[depth]].T / TEMPERATURE
        logp = logits.log_softmax(-1).view(users, beams, -1)
        step = next_beams(trie, depth, nodes, scores, logp, width, excluded=seen)
        nodes, scores = step.nodes, step.scores
        parents = step.parents[..., None].expand(-1, -1, depth)
        beam_tokens = torch.cat(
            [beam_tokens.gather(1, parents), (step.tokens + lo)[..., None]], -1
        )
    return trie.item(nodes), scores


def metrics_at(ranks: list[int]) -> dict[str, float]:
    """`movielens.metrics` at TIGER's k = 5, 10, under TIGER's names (with one
    target per query, HR@k is Recall@k)."""
    return {
        name.replace("HR@", "Recall@"): value
        for name, value in metrics(ranks).items()
        if not name.endswith("@50")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--item-model", type=Path, required=True,
                        help="an item-ID HSTU directory with semantic IDs")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=3, help="evals without gain")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--valid-users", type=int, default=4000,
                        help="validation users per evaluation (test: all)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--report", type=Path, help="metrics JSON + plot directory")
    parser.add_argument("--out", type=Path,
                        help="the trained model, servable (vllm serve)")  # fmt: skip
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    sequences = load_sequences("beauty")
    items = num_items(sequences)
    started = time.time()
    ids = semantic_ids.read(args.item_model)
    if len(ids.codes) != items:
        raise SystemExit(f"{args.item_model}: codes for {len(ids.codes)} items, "
                         f"Beauty has {items}")  # fmt: skip
    vocab = CodeTokens(ids.codes)
    print(f"codes: {items} items, tokens per level {vocab.sizes}")
    data = train_sequences(sequences, MAX_ITEMS)
    valid = rng.sample(queries(sequences, "valid", MAX_ITEMS), args.valid_users)
    test = queries(sequences, "test", MAX_ITEMS)
    # Positions count tokens (levels per event): 4 x 51 fit the item-ID
    # model's 211 positions.
    model = build_model("hstu", vocab.num_tokens)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    history, best_epoch = fit(
        model,
        lambda: train_epoch(model, data, vocab, optimizer, rng),
        lambda: metrics_at(beam_ranks(model, valid, vocab, args.beam)),
        args,
        "semantic-ID HSTU beauty",
    )
    result = {
        "dataset": "beauty",
        "arch": "hstu-semantic-ids",
        "levels": vocab.sizes,
        "beam": args.beam,
        "users": len(test),
        "items": items,
        "best_epoch": best_epoch,
        "train_seconds": round(time.time() - started, 1),
        "test": metrics_at(beam_ranks(model, test, vocab, args.beam)),
    }
    print(json.dumps(result, indent=2))
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        name = "hstu-semantic-ids-beauty"
        (args.report / f"{name}-metrics.json").write_text(json.dumps(result, indent=2))
        save_plot(history, args.report / f"{name}-training.png", name,
                  metrics=("Recall@10", "NDCG@10"))  # fmt: skip
    if args.out:
        semantic_ids.make_model(write_model_dir(model, args.out), ids)
        print(f"wrote {args.out}: vllm serve {args.out}")


if __name__ == "__main__":
    main()
