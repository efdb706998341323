"""Plain PyTorch HSTU: the oracle every served result is checked against.

`HSTUReference` is Meta's research HSTU (generative retrieval) for one user,
over the whole sequence, no cache, no paging. Its parameter names are the keys
of Meta's checkpoints without the `module.` prefix, so an original state dict
loads with `load_state_dict` and nothing in between: a converter bug cannot
hide in a shared mapping.

Math (docs/DESIGN.md section 3):
    n  = LayerNorm(x)                                   # no affine, eps 1e-6
    u, v, q, k = split(silu(n @ W_uvqk))                # order u|v|q|k
    A[i,j] = silu(q_i . k_j + rab[i,j]) / N * [j <= i]  # N fixed
    x  = x + (u * LayerNorm(A @ v)) @ W_o + b_o
    rab[i,j] = pos_w[N-1 + j - i] + ts_w[bucket(ts_query[i] - ts_key[j])]

The `_action_emb` table is vllm-mtgr's extension (absent in Meta's models).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def time_buckets(delta: torch.Tensor, num_buckets: int, divisor: float) -> torch.Tensor:
    """Meta's bucketization: floor(ln(max(|dt|, 1)) / divisor), clamped.

    The log runs in float32, as Meta's `torch.log` of an int64 tensor does.
    """
    seconds = delta.abs().clamp(min=1).to(torch.float32)
    return (torch.log(seconds) / divisor).long().clamp(0, num_buckets)


def relative_bias(
    positions_q: torch.Tensor,
    positions_k: torch.Tensor,
    query_times: torch.Tensor,
    key_times: torch.Tensor,
    pos_w: torch.Tensor,
    ts_w: torch.Tensor,
    max_len: int,
    divisor: float,
) -> torch.Tensor:
    """rab[i, j] for queries i and keys j (`[Tq, Tk]`, float32)."""
    rel = (positions_k[None, :] - positions_q[:, None] + max_len - 1).clamp(
        0, 2 * max_len - 2
    )
    buckets = time_buckets(
        query_times[:, None] - key_times[None, :], ts_w.numel() - 1, divisor
    )
    return pos_w.float()[rel] + ts_w.float()[buckets]


class _RelativeBias(nn.Module):
    def __init__(self, max_len: int, num_buckets: int) -> None:
        super().__init__()
        self._ts_w = nn.Parameter(torch.empty(num_buckets + 1))
        self._pos_w = nn.Parameter(torch.empty(2 * max_len - 1))


class _HSTULayer(nn.Module):
    def __init__(
        self, dim: int, heads: int, dqk: int, dv: int, max_len: int, buckets: int
    ) -> None:
        super().__init__()
        self._uvqk = nn.Parameter(torch.empty(dim, (2 * dv + 2 * dqk) * heads))
        self._o = nn.Linear(dv * heads, dim)
        self._rel_attn_bias = _RelativeBias(max_len, buckets)


class _Holder(nn.Module):
    """Empty container so parameter names match Meta's module tree."""


class HSTUReference(nn.Module):
    """Meta's research HSTU for one user's full sequence."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        num_blocks: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        max_sequence_len: int,
        num_time_buckets: int = 128,
        time_bucket_divisor: float = 0.301,
        eps: float = 1e-6,
        num_action_types: int = 0,
        temperature: float = 0.05,
    ) -> None:
        super().__init__()
        self.dim = embedding_dim
        self.heads = num_heads
        self.dqk = attention_dim
        self.dv = linear_dim
        self.max_len = max_sequence_len
        self.divisor = time_bucket_divisor
        self.eps = eps
        self.temperature = temperature
        self._embedding_module = _Holder()
        self._embedding_module._item_emb = nn.Embedding(num_items + 1, embedding_dim)
        self._input_features_preproc = _Holder()
        self._input_features_preproc._pos_emb = nn.Embedding(
            max_sequence_len, embedding_dim
        )
        self._hstu = _Holder()
        self._hstu._attention_layers = nn.ModuleList(
            _HSTULayer(
                embedding_dim,
                num_heads,
                attention_dim,
                linear_dim,
                max_sequence_len,
                num_time_buckets,
            )
            for _ in range(num_blocks)
        )
        self._action_emb = (
            nn.Embedding(num_action_types, embedding_dim) if num_action_types else None
        )

    @classmethod
    def from_config(cls, config) -> HSTUReference:
        """Build from an `MTGRConfig` (random-init weights; load a state dict)."""
        return cls(
            num_items=config.num_items,
            embedding_dim=config.hidden_size,
            num_blocks=config.num_hidden_layers,
            num_heads=config.num_attention_heads,
            attention_dim=config.attention_dim,
            linear_dim=config.linear_dim,
            max_sequence_len=config.max_position_embeddings,
            num_time_buckets=config.num_time_buckets,
            time_bucket_divisor=config.time_bucket_divisor,
            eps=config.layer_norm_eps,
            num_action_types=config.num_action_types,
            temperature=config.logit_temperature,
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> HSTUReference:
        """Load a served model directory (vllm-mtgr names) into the oracle."""
        from safetensors.torch import load_file

        from vllm_mtgr.config import MTGRConfig

        model_dir = Path(model_dir)
        reference = cls.from_config(MTGRConfig.from_pretrained(model_dir))
        served: dict[str, torch.Tensor] = {}
        for shard in sorted(model_dir.glob("*.safetensors")):
            served.update(load_file(shard))
        state = {}
        for name, tensor in served.items():
            layer = re.match(r"model\.layers\.(\d+)\.(.+)", name)
            if name == "model.item_embedding.weight":
                state["_embedding_module._item_emb.weight"] = tensor[:-1]  # no <unk>
            elif name == "model.position_embedding.weight":
                state["_input_features_preproc._pos_emb.weight"] = tensor
            elif name == "model.action_embedding.weight":
                state["_action_emb.weight"] = tensor
            elif layer:
                prefix = f"_hstu._attention_layers.{layer.group(1)}."
                key = {
                    "uvqk_proj.weight": "_uvqk",
                    "o_proj.weight": "_o.weight",
                    "o_proj.bias": "_o.bias",
                    "attn.relative_bias.position_weight": "_rel_attn_bias._pos_w",
                    "attn.relative_bias.time_weight": "_rel_attn_bias._ts_w",
                }[layer.group(2)]
                state[prefix + key] = tensor.t() if key == "_uvqk" else tensor
        reference.load_state_dict({k: v.float() for k, v in state.items()})
        return reference.eval()

    def _layer(
        self,
        layer: _HSTULayer,
        x: torch.Tensor,
        rab: torch.Tensor,
    ) -> torch.Tensor:
        length = x.shape[0]
        h, dqk, dv = self.heads, self.dqk, self.dv
        normed = F.layer_norm(x, [self.dim], eps=self.eps)
        uvqk = F.silu(normed @ layer._uvqk)
        u, v, q, k = torch.split(uvqk, [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        q = q.view(length, h, dqk)
        k = k.view(length, h, dqk)
        v = v.view(length, h, dv)
        scores = torch.einsum("ihd,jhd->hij", q, k) + rab[None]
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        attn = F.silu(scores) / self.max_len * causal
        out = torch.einsum("hij,jhd->ihd", attn, v).reshape(length, h * dv)
        out = u * F.layer_norm(out, [h * dv], eps=self.eps)
        return x + layer._o(out)

    def forward(
        self,
        item_ids: torch.Tensor,
        key_times: torch.Tensor,
        query_times: torch.Tensor,
        actions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L2-normalised output embedding of every position, `[L, D]`."""
        length = item_ids.shape[0]
        if length > self.max_len:
            raise ValueError(f"sequence of {length} exceeds {self.max_len}")
        positions = torch.arange(length)
        x = self._embedding_module._item_emb(item_ids) * math.sqrt(self.dim)
        x = x + self._input_features_preproc._pos_emb(positions)
        if self._action_emb is not None:
            x = x + self._action_emb(
                actions if actions is not None else torch.zeros_like(item_ids)
            )
        for layer in self._hstu._attention_layers:
            rab = relative_bias(
                positions,
                positions,
                query_times,
                key_times,
                layer._rel_attn_bias._pos_w,
                layer._rel_attn_bias._ts_w,
                self.max_len,
                self.divisor,
            )
            x = self._layer(layer, x, rab.to(x.dtype))
        return x / x.norm(dim=-1, keepdim=True).clamp(min=self.eps)

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """Cosine similarity to every item / temperature; padding id 0 is -inf."""
        items = self._embedding_module._item_emb.weight
        items = items / items.norm(dim=-1, keepdim=True).clamp(min=self.eps)
        logits = outputs @ items.T / self.temperature
        logits[:, 0] = float("-inf")
        return logits

    def sequence_logits(
        self,
        item_ids: list[int],
        timestamps: list[int] | None = None,
        request_timestamp: int | None = None,
        history_length: int | None = None,
        actions: list[int] | None = None,
    ) -> torch.Tensor:
        """Logits after every position of a history followed by generated items.

        The first `history_length` items are the history with their
        `timestamps`; later items are generated ones, which happen at
        `request_timestamp` (default: the last history timestamp) with no
        action. Without timestamps every time is 0.
        """
        length = len(item_ids)
        history_length = length if history_length is None else history_length
        history_times = list(timestamps) if timestamps else [0] * history_length
        if request_timestamp is None:
            request_timestamp = history_times[-1] if history_times else 0
        key_times = history_times + [request_timestamp] * (length - history_length)
        query_times = key_times[1:history_length] + [request_timestamp] * (
            length - history_length + 1
        )
        all_actions = None
        if actions is not None:
            all_actions = torch.tensor(
                list(actions) + [0] * (length - history_length), dtype=torch.long
            )
        outputs = self.forward(
            torch.tensor(item_ids, dtype=torch.long),
            torch.tensor(key_times, dtype=torch.long),
            torch.tensor(query_times[:length], dtype=torch.long),
            all_actions,
        )
        return self.logits(outputs)


class _GroupNorm(nn.Module):
    """LayerNorm without affine, then one affine per token group (MTGR's GLN)."""

    def __init__(self, groups: int, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, width))
        self.bias = nn.Parameter(torch.zeros(groups, width))

    def forward(self, x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        return normed * self.weight[groups] + self.bias[groups]


PROFILE, HISTORY, REALTIME, CANDIDATE = range(4)  # MTGR's token groups


class _RankingLayer(nn.Module):
    def __init__(self, config, groups: int) -> None:
        super().__init__()
        h, dqk, dv = config.num_attention_heads, config.attention_dim, config.linear_dim
        d, n = config.hidden_size, config.max_position_embeddings
        self.uvqk_proj = nn.Linear(d, 2 * h * (dv + dqk), bias=False)
        self.o_proj = nn.Linear(h * dv, d)
        self.attn = _Holder()
        self.attn.relative_bias = _Holder()
        self.attn.relative_bias.position_weight = nn.Parameter(torch.empty(2 * n - 1))
        self.attn.relative_bias.time_weight = nn.Parameter(
            torch.empty(config.num_time_buckets + 1)
        )
        self.input_norm = _GroupNorm(groups, d, config.layer_norm_eps)
        self.output_norm = _GroupNorm(groups, h * dv, config.layer_norm_eps)


class MTGRReference(nn.Module):
    """MTGR ranking (docs/DESIGN.md section 3) for one request, whole sequence, dense.

    Parameter names equal the served checkpoint's, so a trained state dict
    loads unchanged into the oracle and, through the ranking converter, into
    vLLM.
    """

    def __init__(self, config) -> None:
        super().__init__()
        from vllm_mtgr.models.scoring_head import ScoringHead

        d = config.hidden_size
        self.config = config
        self.model = _Holder()
        self.model.item_embedding = nn.Embedding(config.vocab_size, d)
        self.model.position_embedding = nn.Embedding(config.max_position_embeddings, d)
        if config.num_action_types:
            self.model.action_embedding = nn.Embedding(config.num_action_types, d)
        self.model.profile_embedding = nn.Embedding(
            max(config.profile_vocab_size, 1), d
        )
        self.model.candidate_mlp = _Holder()
        self.model.candidate_mlp.in_proj = nn.Linear(d + config.num_cross_features, d)
        self.model.candidate_mlp.out_proj = nn.Linear(d, d)
        self.model.layers = nn.ModuleList(
            _RankingLayer(config, CANDIDATE + 1)
            for _ in range(config.num_hidden_layers)
        )
        self.scoring_head = ScoringHead.from_config(config)

    def _tokens(self, request: Mapping) -> dict[str, torch.Tensor]:
        """Per token: group, item, action, time, logical position, key limit.

        `request` is the plain JSON form (lists), read here without the
        serving side's parser, defaults included: a missing request time is
        the last event's, a missing candidate time the request time.
        """
        profile = list(request.get("profile", []))
        history = request.get("history") or {}
        realtime = request.get("realtime") or {}
        candidates = request["candidates"]
        h_items, r_items = (
            list(history.get("items", [])),
            list(realtime.get("items", [])),
        )
        h_times = list(history.get("timestamps", []))
        r_times = list(realtime.get("timestamps", []))
        events = h_times + r_times
        when = request.get("request_timestamp")
        when = (events[-1] if events else 0) if when is None else when
        count = len(candidates["items"])
        times = list(candidates.get("timestamps") or [when] * count)
        p = len(profile)
        context = p + len(h_items)
        # Candidates see the real-time events at or before their time.
        limits = [context + sum(t <= c for t in r_times) for c in times]
        actions = [0] * (p + len(h_items) + len(r_items))
        for offset, part in ((p, history), (p + len(h_items), realtime)):
            for i, action in enumerate(part.get("actions") or []):
                actions[offset + i] = action
        profile_time = h_times[-1] if h_times else 0
        values = {
            "groups": [PROFILE] * p
            + [HISTORY] * len(h_items)
            + [REALTIME] * len(r_items)
            + [CANDIDATE] * count,
            "times": [profile_time] * p + h_times + r_times + times,
            "limits": [context] * context + [0] * len(r_items) + limits,
            "positions": list(range(context + len(r_items))) + limits,
            "items": h_items + r_items,
            "actions": actions[p:],
            "profile": profile,
            "candidates": list(candidates["items"]),
        }
        return {k: torch.tensor(v, dtype=torch.long) for k, v in values.items()}

    def _embed(self, request: Mapping, tokens) -> torch.Tensor:
        m, d = self.model, self.config.hidden_size
        parts = []
        if len(tokens["profile"]):
            parts.append(m.profile_embedding(tokens["profile"]))
        if len(tokens["items"]):
            x = m.item_embedding(tokens["items"]) * math.sqrt(d)
            if self.config.num_action_types:
                x = x + m.action_embedding(tokens["actions"])
            parts.append(x)
        candidates = m.item_embedding(tokens["candidates"])
        features = torch.tensor(
            request["candidates"].get("features") or [[]] * len(candidates),
            dtype=candidates.dtype,
        ).reshape(len(candidates), self.config.num_cross_features)
        hidden = F.silu(m.candidate_mlp.in_proj(torch.cat([candidates, features], -1)))
        parts.append(m.candidate_mlp.out_proj(hidden))
        return torch.cat(parts) + m.position_embedding(tokens["positions"])

    def scores(self, request: Mapping) -> torch.Tensor:
        """`[candidates, tasks]` probabilities of a request in its JSON form."""
        config = self.config
        h, dqk, dv = config.num_attention_heads, config.attention_dim, config.linear_dim
        n = config.max_position_embeddings
        tokens = self._tokens(request)
        x = self._embed(request, tokens)
        length = x.shape[0]
        i = torch.arange(length)[:, None]
        j = torch.arange(length)[None, :]
        limit = tokens["limits"][:, None]
        candidate = (limit > 0) & (limit <= i)
        visible = (
            ((limit == 0) & (j <= i))
            | ((limit > i) & (j < limit))
            | (candidate & ((j < limit) | (j == i)))
        )
        logical_i = torch.where(candidate, limit, i)
        distance = torch.where(j == i, 0, j - logical_i)
        buckets = time_buckets(
            tokens["times"][:, None] - tokens["times"][None, :],
            config.num_time_buckets,
            config.time_bucket_divisor,
        )
        groups = tokens["groups"]
        for layer in self.model.layers:
            bias = layer.attn.relative_bias
            rab = bias.position_weight[(distance + n - 1).clamp(0, 2 * n - 2)]
            rab = rab + bias.time_weight[buckets]
            uvqk = F.silu(layer.uvqk_proj(layer.input_norm(x, groups)))
            u, v, q, k = uvqk.split([h * dv, h * dv, h * dqk, h * dqk], -1)
            scores = torch.einsum(
                "ihd,jhd->hij", q.view(length, h, dqk), k.view(length, h, dqk)
            )
            attn = F.silu(scores + rab) / config.attention_normalizer * visible
            out = torch.einsum("hij,jhd->ihd", attn, v.view(length, h, dv))
            gated = u * layer.output_norm(out.reshape(length, h * dv), groups)
            x = x + layer.o_proj(gated)
        return self.scoring_head(x[-len(tokens["candidates"]) :])


def constrained_beam_search(
    step, codes: torch.Tensor, width: int, seen: Collection[int] = ()
) -> list[tuple[int, float]]:
    """The oracle of semantic-ID decoding: (item, summed log-probability)
    pairs, best first, of a beam search of `width` over `codes` (`[items,
    levels]`, row i: item i + 1) without the items in `seen`: their codes
    are struck from the table before the search.

    One beam at a time, with the valid next tokens read off the code table
    itself (no prefix structure), so that it shares nothing with the served
    path. `step(tokens)` as in `vllm_mtgr.beams.beam_search`.
    """
    rows = {item: tuple(row) for item, row in enumerate(codes.tolist(), start=1)}
    unseen = [row for item, row in rows.items() if item not in seen]
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    for depth in range(codes.shape[1]):
        candidates = []
        for score, prefix in beams:
            logp = step(torch.tensor([prefix], dtype=torch.long).reshape(1, depth))[0]
            nexts = {row[depth] for row in unseen if row[:depth] == prefix}
            candidates += [(score + float(logp[t]), (*prefix, t)) for t in nexts]
        candidates.sort(key=lambda c: -c[0])
        beams = candidates[:width]
    index = {row: item for item, row in rows.items()}
    return [(index[prefix], score) for score, prefix in beams]
