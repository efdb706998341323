"""HSTU generative retrieval (`MTGRForCausalLM`) on vLLM's layers.

Meta's research HSTU (docs/DESIGN.md section 3): item embedding * sqrt(D) plus a
learned position embedding, HSTU blocks, L2-normalised output; the logits are
the cosine similarity to every item's embedding divided by a temperature.
Timestamps reach every token through its position rows (`vllm_mtgr.events`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import CacheConfig, VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_mtgr.attention import HSTUAttention
from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.events import (
    decode_delta,
    decode_position_rows,
    encode_position_rows,
)
from vllm_mtgr.kernels import HSTUAttentionParams, gated_layer_norm
from vllm_mtgr.multimodal import (
    EventsDummyInputsBuilder,
    EventsMultiModalProcessor,
    EventsProcessingInfo,
    events_from_features,
)
from vllm_mtgr.slots import KEY_LIMIT_SLOTS, time_slots
from vllm_mtgr.weight_files import check_weight_files


def _attention_params(config: MTGRConfig) -> HSTUAttentionParams:
    return HSTUAttentionParams(
        attention_dim=config.attention_dim,
        value_dim=config.linear_dim,
        max_len=config.max_position_embeddings,
        normalizer=float(config.attention_normalizer),
        time_bucket_divisor=config.time_bucket_divisor,
    )


def _layer_norm(x: torch.Tensor, eps: float, tp_size: int) -> torch.Tensor:
    """Affine-free LayerNorm over the last dim, which is sharded across TP ranks."""
    stats = torch.stack([x.float().sum(-1), x.float().square().sum(-1)])
    stats = tensor_model_parallel_all_reduce(stats)
    count = x.shape[-1] * tp_size
    mean = stats[0] / count
    var = stats[1] / count - mean.square()
    return ((x.float() - mean[..., None]) * torch.rsqrt(var[..., None] + eps)).to(
        x.dtype
    )


def _with_slots(
    x: torch.Tensor, heads: int, slots: torch.Tensor | None, width: int
) -> torch.Tensor:
    """`[T, heads * d]` -> `[T, heads * width]`: each head's d, slots, zeros."""
    tokens = x.shape[0]
    parts = [x.view(tokens, heads, -1)]
    if slots is not None:
        parts.append(slots[:, None, :].expand(tokens, heads, slots.shape[-1]))
    used = sum(p.shape[-1] for p in parts)
    if used < width:
        parts.append(x.new_zeros(tokens, heads, width - used))
    return torch.cat(parts, dim=-1).view(tokens, heads * width)


class GroupLayerNorm(nn.Module):
    """MTGR's group LayerNorm: one LayerNorm, then one affine per token group."""

    def __init__(self, groups: int, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, width))
        self.bias = nn.Parameter(torch.zeros(groups, width))

    def forward(
        self,
        x: torch.Tensor,
        groups: torch.Tensor | int,
        gate: torch.Tensor | None = None,
        silu_gate: bool = False,
    ) -> torch.Tensor:
        """`gate * (LayerNorm(x) * weight[group] + bias[group])`, `[T, width]`,
        for `x` `[T, heads, dim]` normed over heads * dim (no gate: without;
        `silu_gate`: `silu(gate)` instead of `gate`)."""
        if isinstance(groups, int):
            # One group (the candidates): norm, affine, gate and its SiLU in
            # one kernel over the pass's ~65k rows, instead of five.
            weight, bias = self.weight[groups], self.bias[groups]
            return gated_layer_norm(
                x, x.shape[-1], gate, self.eps, weight, bias, silu_gate
            )
        flat = x.reshape(x.shape[0], -1)
        normed = F.layer_norm(flat, flat.shape[-1:], eps=self.eps)
        normed = normed * self.weight[groups] + self.bias[groups]
        if gate is None:
            return normed
        return (F.silu(gate) if silu_gate else gate) * normed


class HSTUBlock(nn.Module):
    """One HSTU layer; with `num_groups`, MTGR's group LayerNorms around it."""

    def __init__(
        self,
        config: MTGRConfig,
        cache_config: CacheConfig | None,
        prefix: str,
        num_groups: int = 0,
    ) -> None:
        super().__init__()
        self.tp_size = get_tensor_model_parallel_world_size()
        if config.num_attention_heads % self.tp_size:
            raise ValueError(
                f"num_attention_heads ({config.num_attention_heads}) must divide "
                f"by the tensor parallel size ({self.tp_size})"
            )
        self.heads = config.num_attention_heads // self.tp_size
        self.dqk = config.attention_dim
        self.dv = config.linear_dim
        self.eps = config.layer_norm_eps
        total_heads = config.num_attention_heads
        self.uvqk_proj = MergedColumnParallelLinear(
            config.hidden_size,
            [total_heads * self.dv] * 2 + [total_heads * self.dqk] * 2,
            bias=False,
            prefix=f"{prefix}.uvqk_proj",
        )
        self.params = _attention_params(config)
        self.attn = HSTUAttention(
            self.heads,
            self.params,
            config.num_time_buckets,
            cache_config,
            prefix=f"{prefix}.attn",
        )
        self.o_proj = RowParallelLinear(
            total_heads * self.dv,
            config.hidden_size,
            bias=True,
            input_is_parallel=True,
            prefix=f"{prefix}.o_proj",
        )
        self.input_norm = self.output_norm = None
        if num_groups:
            if self.tp_size > 1:
                raise ValueError("MTGR ranking runs with tensor parallel size 1")
            self.input_norm = GroupLayerNorm(num_groups, config.hidden_size, self.eps)
            self.output_norm = GroupLayerNorm(
                num_groups, total_heads * self.dv, self.eps
            )

    def project(
        self,
        x: torch.Tensor,
        groups: torch.Tensor | int | None = None,
        activate: bool = True,
    ) -> tuple[torch.Tensor, ...]:
        """(u, v, q, k) of each token, `[T, heads * dim]` each (not
        `activate`: before their SiLU, for kernels that apply it as they read)."""
        h, dqk, dv = self.heads, self.dqk, self.dv
        if self.input_norm is not None:
            normed = self.input_norm(x[:, None], groups)
        else:
            normed = F.layer_norm(x, x.shape[-1:], eps=self.eps)
        uvqk, _ = self.uvqk_proj(normed)
        if activate:
            uvqk = F.silu(uvqk)
        return uvqk.split([h * dv, h * dv, h * dqk, h * dqk], dim=-1)

    def finish(
        self,
        x: torch.Tensor,
        attention: torch.Tensor,
        u: torch.Tensor,
        groups: torch.Tensor | int | None = None,
        silu_gate: bool = False,
    ) -> torch.Tensor:
        """x + o_proj(u * norm(attention)); `attention` is `[T, heads, width]`
        with each head's values first; `silu_gate`: `u` is before its SiLU
        (MTGR's group norms only)."""
        h, dv = self.heads, self.dv
        if self.output_norm is not None:
            gated = self.output_norm(attention[..., :dv], groups, u, silu_gate)
        elif self.tp_size == 1:
            gated = gated_layer_norm(attention, dv, u, self.eps)
        else:
            values = attention[..., :dv].reshape(-1, h * dv)
            gated = u * _layer_norm(values, self.eps, self.tp_size)
        out, _ = self.o_proj(gated)
        return x + out

    def forward(
        self,
        x: torch.Tensor,
        key_slots: torch.Tensor,
        query_slots: torch.Tensor,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h, width = self.heads, self.params.cache_head_size
        u, v, q, k = self.project(x, groups)
        attn = self.attn(
            _with_slots(q, h, query_slots, width),
            _with_slots(k, h, key_slots, width),
            _with_slots(v, h, None, width),
        )
        return self.finish(x, attn.view(-1, h, width), u, groups)


@support_torch_compile(
    # positions are the [3, tokens] event rows (see vllm_mtgr.events).
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0}
)
class MTGRModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MTGRConfig = vllm_config.model_config.hf_config
        self.config = config
        self.embedding_scale = math.sqrt(config.hidden_size)
        self.item_embedding = VocabParallelEmbedding(
            config.vocab_size, config.hidden_size, prefix=f"{prefix}.item_embedding"
        )
        self.position_embedding = nn.Embedding(
            config.max_position_embeddings, config.hidden_size
        )
        self.action_embedding = (
            nn.Embedding(config.num_action_types, config.hidden_size)
            if config.num_action_types
            else None
        )
        self.layers = nn.ModuleList(
            HSTUBlock(config, vllm_config.cache_config, prefix=f"{prefix}.layers.{i}")
            for i in range(config.num_hidden_layers)
        )

    def embed_events(
        self, item_ids: torch.Tensor, actions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embedding of history events: item * sqrt(D) + action."""
        x = self.item_embedding(item_ids) * self.embedding_scale
        if self.action_embedding is not None:
            if actions is None:
                actions = torch.zeros_like(item_ids)
            x = x + self.action_embedding(actions)
        return x

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = inputs_embeds if inputs_embeds is not None else self.embed_events(input_ids)
        token_positions, key_times, query_times = decode_position_rows(positions)
        x = x + self.position_embedding(token_positions)
        key_slots = time_slots(key_times, x.dtype)
        # Retrieval is causal: every query's key limit is 0.
        query_slots = F.pad(time_slots(query_times, x.dtype), (0, KEY_LIMIT_SLOTS))
        for layer in self.layers:
            x = layer(x, key_slots, query_slots)
        return x


class HistoryEventsInput:
    """vLLM's multimodal hooks of a model whose prompt is a user's history of
    events (`vllm_mtgr.multimodal`): item-ID retrieval and semantic-ID
    retrieval. `self.model` is an `MTGRModel`."""

    model: MTGRModel

    def get_language_model(self) -> nn.Module:
        return self.model

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # The history tokens themselves carry the events; no placeholder text.
        return None

    def embed_multimodal(self, **kwargs: object) -> Sequence[torch.Tensor]:
        # Events arrive in chunks of EVENT_CHUNK_TOKENS: embed all chunks at
        # once (a few kernels per batch, not per chunk), return per-chunk views.
        item_ids = as_tensor_list(kwargs["item_ids"])
        actions = as_tensor_list(kwargs["actions"])
        device = self.model.position_embedding.weight.device
        embeds = self.model.embed_events(
            torch.cat(item_ids).to(device), torch.cat(actions).to(device)
        )
        return list(embeds.split([len(ids) for ids in item_ids]))

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor] | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
        **_kwargs: object,
    ) -> torch.Tensor:
        embeds = self.model.embed_events(input_ids)
        return merge_event_embeddings(embeds, multimodal_embeddings, is_multimodal)


@MULTIMODAL_REGISTRY.register_processor(
    EventsMultiModalProcessor,
    info=EventsProcessingInfo,
    dummy_inputs=EventsDummyInputsBuilder,
)
class MTGRForCausalLM(HistoryEventsInput, nn.Module, SupportsMultiModal, SupportsMRoPE):
    """HSTU next-item retrieval: the history is the prompt, items are tokens."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        self.config: MTGRConfig = vllm_config.model_config.hf_config
        self.model_dir = vllm_config.model_config.model
        self.model = MTGRModel(vllm_config=vllm_config, prefix=f"{prefix}model")
        self.tp_size = get_tensor_model_parallel_world_size()
        # 1 / |item embedding|, computed on first use after each weight load.
        self._inverse_item_norms: torch.Tensor | None = None

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[object]
    ) -> tuple[torch.Tensor, int]:
        key_times, query_times, request_time = events_from_features(
            len(input_tokens), mm_features
        )
        rows = encode_position_rows(len(input_tokens), key_times, query_times)
        # An np.int64, not an int: the runner adds it to an np.int32 context
        # length, and NumPy 2 would keep that sum in int32 and overflow.
        return torch.from_numpy(rows), np.int64(decode_delta(request_time))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object = None,
        inputs_embeds: torch.Tensor | None = None,
        **_kwargs: object,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def _item_inverse_norms(self) -> torch.Tensor:
        if self._inverse_item_norms is None:
            weight = self.model.item_embedding.weight
            norms = weight.float().norm(dim=-1).clamp(min=self.config.layer_norm_eps)
            self._inverse_item_norms = norms.reciprocal()
        return self._inverse_item_norms

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Cosine similarity to each item / temperature; special tokens -inf."""
        eps = self.config.layer_norm_eps
        outputs = hidden_states / hidden_states.norm(dim=-1, keepdim=True).clamp(
            min=eps
        )
        weight = self.model.item_embedding.weight
        logits = F.linear(outputs, weight).float() * self._item_inverse_norms()
        if self.tp_size > 1:
            logits = tensor_model_parallel_all_gather(logits)
        logits = logits[:, : self.config.vocab_size] / self.config.logit_temperature
        logits[:, 0] = float("-inf")
        logits[:, self.config.unk_token_id] = float("-inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = load_weights_by_name(self, weights, self.model_dir)
        self._inverse_item_norms = None
        return loaded


def as_tensor_list(batch: object) -> list[torch.Tensor]:
    """A batched multimodal field as one tensor per item (vLLM passes either)."""
    if isinstance(batch, torch.Tensor):
        return list(batch.unbind(0))
    return list(batch)  # type: ignore[arg-type]


def merge_event_embeddings(
    embeds: torch.Tensor,
    multimodal_embeddings: Sequence[torch.Tensor] | None,
    is_multimodal: torch.Tensor | None,
) -> torch.Tensor:
    """Write the per-item embeddings over the token embeddings they replace."""
    if multimodal_embeddings is not None and len(multimodal_embeddings) > 0:
        assert is_multimodal is not None
        embeds[is_multimodal.to(embeds.device)] = torch.cat(
            list(multimodal_embeddings)
        ).to(embeds.dtype)
    return embeds


def load_weights_by_name(
    module: nn.Module, weights: Iterable[tuple[str, torch.Tensor]], model_dir: str
) -> set[str]:
    """Load checkpoint tensors named as the module's parameters; refuse others."""
    # Before the (lazy) iterator opens a file: a broken one is named.
    check_weight_files(model_dir)
    params = dict(module.named_parameters())
    loaded: set[str] = set()
    for name, tensor in weights:
        if name not in params:
            raise ValueError(f"checkpoint tensor {name!r} is not a model weight")
        param = params[name]
        getattr(param, "weight_loader", default_weight_loader)(param, tensor)
        loaded.add(name)
    return loaded
