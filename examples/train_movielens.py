"""Train HSTU (or a SASRec baseline) on MovieLens, Meta's research protocol.

    python examples/train_movielens.py --dataset ml-100k --out models/hstu-ml100k
    python examples/train_movielens.py --dataset ml-100k --arch sasrec
    python examples/train_movielens.py --dataset beauty --report DIR   # Amazon Beauty

Protocol (generative-recommenders, ML-1M config, sizes kept): sequences by
timestamp, leave-one-out (last item test, second-to-last validation), 200
most recent events, D=50, 2 blocks, 1 head, dqk=dv=50, dropout 0.2, sampled
softmax with 128 uniform negatives at temperature 0.05 over L2-normalised
embeddings, Adam(1e-3, betas 0.9/0.98), batch 128. The epoch with the best
validation NDCG@10 is kept and tested. HSTU is saved in Meta's checkpoint
format and converted by `vllm_mtgr.converters` into a servable directory.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from movielens import (
    DATASETS,
    Query,
    Sequence,
    load_sequences,
    metrics,
    num_items,
    queries,
    train_sequences,
)
from torch import nn
from tqdm import tqdm

from vllm_mtgr.converters.meta_hstu import ConversionOptions, convert
from vllm_mtgr.kernels.reference import HSTUReference, time_buckets

MAX_LEN = 200
OUTPUT_LEN = 10  # Meta's N = max_len + output length + 1
DIM = 50
DROPOUT = 0.2
NEGATIVES = 128
TEMPERATURE = 0.05
BATCH = 128


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)


class TrainableHSTU(HSTUReference):
    """The oracle's parameters (Meta's names), with a batched, dropout forward."""

    def encode(
        self, ids: torch.Tensor, key_times: torch.Tensor, query_times: torch.Tensor
    ) -> torch.Tensor:
        batch, length = ids.shape
        positions = torch.arange(length)
        valid = (ids != 0).unsqueeze(-1)
        x = self._embedding_module._item_emb(ids) * math.sqrt(self.dim)
        x = x + self._input_features_preproc._pos_emb(positions)
        x = F.dropout(x, DROPOUT, self.training) * valid
        rel = (positions[None, :] - positions[:, None] + self.max_len - 1).clamp(
            0, 2 * self.max_len - 2
        )
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        h, dqk, dv = self.heads, self.dqk, self.dv
        buckets = time_buckets(
            query_times[:, :, None] - key_times[:, None, :],
            self._hstu._attention_layers[0]._rel_attn_bias._ts_w.numel() - 1,
            self.divisor,
        )
        for layer in self._hstu._attention_layers:
            bias = layer._rel_attn_bias
            rab = bias._pos_w[rel][None] + bias._ts_w[buckets]
            normed = F.layer_norm(x, [self.dim], eps=self.eps)
            u, v, q, k = torch.split(
                F.silu(normed @ layer._uvqk), [h * dv, h * dv, h * dqk, h * dqk], -1
            )
            scores = torch.einsum(
                "bihd,bjhd->bhij",
                q.view(batch, length, h, dqk),
                k.view(batch, length, h, dqk),
            )
            attn = F.silu(scores + rab[:, None]) / self.max_len * causal
            out = torch.einsum("bhij,bjhd->bihd", attn, v.view(batch, length, h, dv))
            out = u * F.layer_norm(
                out.reshape(batch, length, h * dv), [h * dv], eps=self.eps
            )
            x = x + layer._o(F.dropout(out, DROPOUT, self.training))
        return normalize(x)

    def item_embeddings(self) -> torch.Tensor:
        return self._embedding_module._item_emb.weight


class SASRec(nn.Module):
    """Kang & McAuley's self-attentive baseline: softmax attention, LN, FFN."""

    def __init__(self, items: int, blocks: int = 2, heads: int = 1) -> None:
        super().__init__()
        self.items = nn.Embedding(items + 1, DIM, padding_idx=0)
        self.positions = nn.Embedding(MAX_LEN, DIM)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(DIM) for _ in range(blocks))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(DIM, heads, dropout=DROPOUT, batch_first=True)
            for _ in range(blocks)
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(DIM) for _ in range(blocks))
        self.ffns = nn.ModuleList(
            nn.Sequential(
                nn.Linear(DIM, DIM), nn.ReLU(), nn.Dropout(DROPOUT), nn.Linear(DIM, DIM)
            )
            for _ in range(blocks)
        )
        self.final_norm = nn.LayerNorm(DIM)
        nn.init.normal_(self.items.weight, std=0.02)

    def encode(self, ids: torch.Tensor, *_times: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        valid = (ids != 0).unsqueeze(-1)
        x = self.items(ids) * math.sqrt(DIM) + self.positions(torch.arange(length))
        x = F.dropout(x, DROPOUT, self.training) * valid
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        for norm, attn, ffn_norm, ffn in zip(
            self.attn_norms, self.attns, self.ffn_norms, self.ffns, strict=True
        ):
            q = norm(x)
            x = x + attn(q, q, q, attn_mask=future, need_weights=False)[0]
            x = x + F.dropout(ffn(ffn_norm(x)), DROPOUT, self.training)
            x = x * valid
        return normalize(self.final_norm(x))

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight


def build_model(arch: str, items: int) -> nn.Module:
    if arch == "sasrec":
        return SASRec(items)
    model = TrainableHSTU(
        num_items=items,
        embedding_dim=DIM,
        num_blocks=2,
        num_heads=1,
        attention_dim=DIM,
        linear_dim=DIM,
        max_sequence_len=MAX_LEN + OUTPUT_LEN + 1,
        temperature=TEMPERATURE,
    )
    with torch.no_grad():  # Meta's initialisation scales
        for name, param in model.named_parameters():
            if name.endswith("_o.bias"):
                param.zero_()
            elif name.endswith("_o.weight"):
                nn.init.xavier_uniform_(param)
            elif "_pos_emb" in name:
                param.normal_(0, math.sqrt(1 / DIM))
            else:
                param.normal_(0, 0.02)
    return model


def pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long)


def _length_batches(data: list[Sequence], rng: random.Random) -> list[list[Sequence]]:
    """Shuffled batches of similar lengths: far less padding to compute."""
    order = list(data)
    rng.shuffle(order)
    batches = []
    for start in range(0, len(order), BATCH * 8):
        group = sorted(order[start : start + BATCH * 8], key=lambda s: len(s.items))
        batches += [group[i : i + BATCH] for i in range(0, len(group), BATCH)]
    rng.shuffle(batches)
    return batches


def train_epoch(
    model: nn.Module,
    data: list[Sequence],
    optimizer: torch.optim.Optimizer,
    items: int,
    rng: random.Random,
) -> float:
    model.train()
    losses = []
    for batch in _length_batches(data, rng):
        ids = pad([s.items[:-1] for s in batch])
        targets = pad([s.items[1:] for s in batch])
        key_times = pad([s.times[:-1] for s in batch])
        query_times = pad([s.times[1:] for s in batch])  # the target's time
        out = model.encode(ids, key_times, query_times)
        mask = targets != 0
        positives = targets[mask]
        negatives = torch.randint(1, items + 1, (positives.numel(), NEGATIVES))
        # Scores against the whole (small) table, then the sampled columns: the
        # same sampled softmax, without materialising [rows, 129, D] gathers.
        table = normalize(model.item_embeddings())
        scores = out[mask] @ table.T / TEMPERATURE
        logits = torch.cat(
            [scores.gather(1, positives[:, None]), scores.gather(1, negatives)], 1
        )
        logits[:, 1:] = logits[:, 1:].masked_fill(
            negatives == positives[:, None], float("-inf")
        )
        loss = F.cross_entropy(logits, torch.zeros_like(positives))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return sum(losses) / len(losses)


@torch.no_grad()
def rank_targets(model: nn.Module, batch_queries: list[Query]) -> list[int]:
    """0-based rank of each target among all items, seen items excluded."""
    model.eval()
    ranks = []
    items = normalize(model.item_embeddings())
    for start in range(0, len(batch_queries), 256):
        batch = batch_queries[start : start + 256]
        ids = pad([q.history for q in batch])
        key_times = pad([q.times for q in batch])
        query_times = pad([q.times[1:] + [q.target_time] for q in batch])
        out = model.encode(ids, key_times, query_times)
        last = out[
            torch.arange(len(batch)), torch.tensor([len(q.history) - 1 for q in batch])
        ]
        scores = last @ items.T
        scores[:, 0] = float("-inf")
        for row, q in enumerate(batch):
            scores[row, q.history] = float("-inf")
            ranks.append(int((scores[row] > scores[row, q.target]).sum()))
    return ranks


def save_plot(
    history: dict, path: Path, title: str, metrics=("HR@10", "NDCG@10")
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(history["epoch"], history["loss"])
    left.set(xlabel="epoch", ylabel="sampled softmax loss", title="training loss")
    for name in metrics:
        right.plot(history["eval_epoch"], history[name], marker="o", label=name)
    right.set(xlabel="epoch", title="validation (all items, seen excluded)")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fit(
    model: nn.Module,
    train: Callable[[], float],
    evaluate: Callable[[], dict[str, float]],
    args: argparse.Namespace,
    desc: str,
) -> tuple[dict[str, list], int]:
    """Epochs of `train` (returns the loss), `evaluate` (validation metrics)
    every `args.eval_every` and at the end, stopping after `args.patience`
    evaluations without a better NDCG@10; the model is left at its best
    epoch. Returns the curves for `save_plot` and the best epoch."""
    history: dict[str, list] = {"epoch": [], "loss": [], "eval_epoch": []}
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    progress = tqdm(range(1, args.epochs + 1), desc=desc)
    for epoch in progress:
        loss = train()
        history["epoch"].append(epoch)
        history["loss"].append(loss)
        if epoch % args.eval_every and epoch != args.epochs:
            progress.set_postfix(loss=f"{loss:.3f}")
            continue
        scores = evaluate()
        history["eval_epoch"].append(epoch)
        for name, value in scores.items():
            history.setdefault(name, []).append(value)
        progress.set_postfix(loss=f"{loss:.3f}", ndcg10=f"{scores['NDCG@10']:.4f}")
        if scores["NDCG@10"] > best:
            best, stale, best_epoch = scores["NDCG@10"], 0, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= args.patience:
                break
    model.load_state_dict(best_state)
    return history, best_epoch


def write_model_dir(model: nn.Module, out: Path) -> Path:
    """A trained HSTU as a servable directory: saved in Meta's checkpoint
    format, then converted (`vllm_mtgr.converters.meta_hstu`)."""
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = Path(scratch) / "hstu.pt"
        state = {f"module.{k}": v for k, v in model.state_dict().items()}
        torch.save({"model_state_dict": state}, checkpoint)
        options = ConversionOptions(num_heads=1, temperature=TEMPERATURE)
        return convert(checkpoint, out, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", choices=DATASETS, default="ml-100k")
    parser.add_argument("--arch", choices=["hstu", "sasrec"], default="hstu")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--patience", type=int, default=4, help="evals without gain")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="model directory (HSTU)")
    parser.add_argument("--report", type=Path, help="metrics JSON + plot directory")
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    sequences = load_sequences(args.dataset)
    items = num_items(sequences)
    data = train_sequences(sequences, MAX_LEN)
    valid = queries(sequences, "valid", MAX_LEN)
    test = queries(sequences, "test", MAX_LEN)
    model = build_model(args.arch, items)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    started = time.time()
    history, best_epoch = fit(
        model,
        lambda: train_epoch(model, data, optimizer, items, rng),
        lambda: metrics(rank_targets(model, valid)),
        args,
        f"{args.arch} {args.dataset}",
    )
    result = {
        "dataset": args.dataset,
        "arch": args.arch,
        "users": len(test),
        "items": items,
        "best_epoch": best_epoch,
        "train_seconds": round(time.time() - started, 1),
        "valid": metrics(rank_targets(model, valid)),
        "test": metrics(rank_targets(model, test)),
    }
    print(json.dumps(result, indent=2))
    report = args.report or args.out
    if report:
        report.mkdir(parents=True, exist_ok=True)
        name = f"{args.arch}-{args.dataset}"
        (report / f"{name}-metrics.json").write_text(json.dumps(result, indent=2))
        save_plot(
            history, report / f"{name}-training.png", f"{args.arch} on {args.dataset}"
        )
    if args.arch == "hstu" and args.out:
        write_model_dir(model, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
