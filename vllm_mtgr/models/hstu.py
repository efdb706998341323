"""The HSTU layer every model here is built of (vLLM's parallel linears, the
paged HSTU attention), MTGR's group LayerNorms around it, and the vLLM glue
the models share (weights by name). docs/DESIGN.md section 3 has the math."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence, Set

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import CacheConfig
from vllm.distributed import (
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)
from vllm.model_executor.layers.linear import (
    MergedColumnParallelLinear,
    RowParallelLinear,
)
from vllm.model_executor.layers.pooler.abstract import Pooler
from vllm.model_executor.layers.pooler.common import PoolingParamsUpdate
from vllm.model_executor.layers.quantization import QuantizationConfig
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.model_loader.weight_utils import default_weight_loader

from vllm_mtgr import compat
from vllm_mtgr.attention import HSTUAttention
from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.kernels import HSTUAttentionParams, gated_layer_norm
from vllm_mtgr.multimodal.events import merge_event_embeddings
from vllm_mtgr.transfer import PinnedStaging
from vllm_mtgr.weight_files import check_weight_files


def _attention_params(config: MTGRConfig) -> HSTUAttentionParams:
    return HSTUAttentionParams(
        attention_dim=config.attention_dim,
        value_dim=config.linear_dim,
        max_len=config.max_position_embeddings,
        normalizer=float(config.attention_normalizer),
        time_bucket_divisor=config.time_bucket_divisor,
        # Only ranking histories carry key limits (MTGR's masks).
        key_limits=config.is_ranking,
    )


def _layer_norm(x: torch.Tensor, eps: float, tp_size: int) -> torch.Tensor:
    """Affine-free LayerNorm over the last dim, which is sharded across TP
    ranks; on one rank torch's own (which inductor fuses with its neighbours)."""
    if tp_size == 1:
        return F.layer_norm(x, x.shape[-1:], eps=eps)
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
        quant_config: QuantizationConfig | None = None,
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
            quant_config=quant_config,
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
            quant_config=quant_config,
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
        with each head's values first; `silu_gate`: `u` is before its SiLU."""
        h, dv = self.heads, self.dv
        if self.output_norm is not None:
            gated = self.output_norm(attention[..., :dv], groups, u, silu_gate)
        elif self.tp_size == 1 and not torch.compiler.is_compiling():
            # Eager callers (the poolers' candidates and beams): one kernel.
            gated = gated_layer_norm(attention, dv, u, self.eps, silu_gate=silu_gate)
        else:
            # Compiled (the models' forward): inductor fuses these into one
            # kernel it launches itself, where a custom op would be an opaque
            # call with the dispatcher's and Triton's host costs on every
            # uncaptured step.
            values = attention[..., :dv].reshape(-1, h * dv)
            gate = F.silu(u) if silu_gate else u
            gated = gate * _layer_norm(values, self.eps, self.tp_size)
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
        # SiLU where its inputs are read anyway: q, k and v as their slots are
        # appended (one fused copy), u in the gated norm. A separate SiLU over
        # the projection, a full extra pass, took 6% of a prefill's device
        # time; without it the prefill's fell 3.3% (mtgr-8b, H200, 2026-12-03).
        u, v, q, k = self.project(x, groups, activate=False)
        attn = self.attn(
            _with_slots(F.silu(q), h, query_slots, width),
            _with_slots(F.silu(k), h, key_slots, width),
            _with_slots(F.silu(v), h, None, width),
        )
        return self.finish(x, attn.view(-1, h, width), u, groups, silu_gate=True)


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


class EventEmbeddings:
    """The embeddings every model here builds its history tokens from, under
    the same names in every checkpoint: item * sqrt(D) + action, and a
    learned position embedding. A mixin before `nn.Module`."""

    def init_event_embeddings(self, config: MTGRConfig, prefix: str) -> None:
        d = config.hidden_size
        self.embedding_scale = math.sqrt(d)
        self.item_embedding = VocabParallelEmbedding(
            config.vocab_size, d, prefix=f"{prefix}.item_embedding"
        )
        self.position_embedding = nn.Embedding(config.max_position_embeddings, d)
        self.action_embedding = (
            nn.Embedding(config.num_action_types, d)
            if config.num_action_types
            else None
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


class HistoryPromptInput:
    """vLLM's multimodal hooks every model here shares: the prompt is a
    user's history, its tokens embedded by `self.model.embed_input_ids` and,
    where a multimodal item (events, ranking items) covers them, replaced by
    that item's embeddings. Subclasses add `embed_multimodal`."""

    model: nn.Module
    # Made on first use (`vllm_mtgr.transfer`): one buffer per copy of a step.
    _items_staging: PinnedStaging | None = None
    _rows_staging: PinnedStaging | None = None

    def items_to_device(self, rows: np.ndarray) -> torch.Tensor:
        """A step's multimodal items' int64 fields (`embed_multimodal`) on the
        device, in one non-blocking copy."""
        if self._items_staging is None:
            device = self.model.position_embedding.weight.device
            self._items_staging = PinnedStaging(device)
        return self._items_staging.copy(rows)

    def get_language_model(self) -> nn.Module:
        return self.model

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        # The history tokens themselves carry the items; no placeholder text.
        return None

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor] | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
        **_kwargs: object,
    ) -> torch.Tensor:
        embeds = self.model.embed_input_ids(input_ids)
        if self._rows_staging is None:
            self._rows_staging = PinnedStaging(embeds.device)
        return merge_event_embeddings(
            embeds, multimodal_embeddings, is_multimodal, self._rows_staging
        )


class PoolerStepInput:
    """For models whose pooler runs the layers again after the forward (the
    ranking candidates, the semantic-ID beams): the forward keeps the step's
    positions and attention metadata for the pooler. A mixin before
    `nn.Module`; the model sets `model` and `_layer_name` (its first
    attention layer's) and starts `_step` as None."""

    model: nn.Module
    _layer_name: str
    _step: tuple[torch.Tensor, object] | None

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object = None,
        inputs_embeds: torch.Tensor | None = None,
        **_kwargs: object,
    ) -> torch.Tensor:
        self._step = (positions, compat.step_attention_metadata(self._layer_name))
        return self.model(input_ids, positions, inputs_embeds)

    def finished_step(
        self, finished: list[bool], last_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, object, list[int], torch.Tensor | None] | None:
        """The step just run, taken once: (its positions, its attention
        metadata, the batch rows of the requests it finished, those rows on
        the device, None if there are none); None while vLLM profiles (no
        requests, no cache)."""
        step, self._step = self._step, None
        if step is None or step[1] is None:
            return None
        rows = [i for i, done in enumerate(finished) if done]
        # No copy to the device for a step that finishes nothing (a chunk).
        index = torch.tensor(rows, device=last_tokens.device) if rows else None
        return *step, rows, index


class FinishedStepPooler(Pooler):
    """The pooler of a `PoolerStepInput` model: hands the requests a step
    finishes to `run(finished, last_tokens, hidden_states, pooling_metadata)`
    and returns its output per request (None for one still in prefill).
    `requires_token_ids`: the model also reads each prompt's tokens."""

    def __init__(
        self, run: Callable[..., list[torch.Tensor | None]], requires_token_ids: bool
    ) -> None:
        super().__init__()
        # A callable, not the model: a module here would be a submodule loop.
        self.run = run
        self.requires_token_ids = requires_token_ids

    def get_supported_tasks(self) -> Set[str]:
        return {"plugin"}

    def get_pooling_updates(self, task: str) -> PoolingParamsUpdate:
        return PoolingParamsUpdate(requires_token_ids=self.requires_token_ids)

    def forward(self, hidden_states: torch.Tensor, pooling_metadata) -> list:
        cursor = pooling_metadata.get_pooling_cursor()
        return self.run(
            cursor.is_finished().tolist(),
            cursor.last_token_indices_gpu,
            hidden_states,
            pooling_metadata,
        )
