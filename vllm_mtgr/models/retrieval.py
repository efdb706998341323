"""HSTU generative retrieval (`MTGRForCausalLM`) on vLLM's layers.

Meta's research HSTU (docs/DESIGN.md section 3): item embedding * sqrt(D) plus a
learned position embedding, HSTU blocks, L2-normalised output; the logits are
the cosine similarity to every item's embedding divided by a temperature.
Timestamps reach every token through its position rows
(`vllm_mtgr.layout.positions`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.distributed import (
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
)
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.layout.positions import (
    decode_delta,
    decode_position_rows,
    encode_position_rows,
)
from vllm_mtgr.layout.slots import KEY_LIMIT_SLOTS, time_slots
from vllm_mtgr.models.hstu import (
    EventEmbeddings,
    HistoryPromptInput,
    HSTUBlock,
    load_weights_by_name,
)
from vllm_mtgr.multimodal.events import (
    EventsDummyInputsBuilder,
    EventsMultiModalProcessor,
    EventsProcessingInfo,
    as_tensor_list,
    events_from_features,
)


@support_torch_compile(
    # positions are the [3, tokens] event rows (see vllm_mtgr.layout.positions).
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0}
)
class MTGRModel(EventEmbeddings, nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MTGRConfig = vllm_config.model_config.hf_config
        self.config = config
        self.init_event_embeddings(config, prefix)
        self.layers = nn.ModuleList(
            HSTUBlock(
                config,
                vllm_config.cache_config,
                prefix=f"{prefix}.layers.{i}",
                quant_config=vllm_config.quant_config,
            )
            for i in range(config.num_hidden_layers)
        )

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_events(input_ids)

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


class HistoryEventsInput(HistoryPromptInput):
    """The events' embeddings of a model whose prompt is a user's history of
    events (`vllm_mtgr.multimodal.events`): item-ID retrieval and semantic-ID
    retrieval. `self.model` is an `MTGRModel`."""

    model: MTGRModel

    def embed_multimodal(self, **kwargs: object) -> Sequence[torch.Tensor]:
        # Events arrive in chunks (`chunk_bounds`): embed all chunks at
        # once (a few kernels per batch, not per chunk), return per-chunk views.
        item_ids = as_tensor_list(kwargs["item_ids"])
        actions = as_tensor_list(kwargs["actions"])
        rows = self.items_to_device(
            np.stack([torch.cat(item_ids).numpy(), torch.cat(actions).numpy()])
        )
        embeds = self.model.embed_events(rows[0], rows[1])
        return list(embeds.split([len(ids) for ids in item_ids]))


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
        # 1 / (|item embedding| * temperature), float32, computed on first use
        # after each weight load.
        self._item_scales: torch.Tensor | None = None

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

    def _item_scale(self) -> torch.Tensor:
        if self._item_scales is None:
            weight = self.model.item_embedding.weight
            norms = weight.float().norm(dim=-1).clamp(min=self.config.layer_norm_eps)
            self._item_scales = (norms * self.config.logit_temperature).reciprocal()
        return self._item_scales

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Cosine similarity to each item / temperature; special tokens -inf."""
        eps = self.config.layer_norm_eps
        outputs = hidden_states / hidden_states.norm(dim=-1, keepdim=True).clamp(
            min=eps
        )
        weight = self.model.item_embedding.weight
        # One pass over the [rows, items] products: the 16-bit products times
        # the float32 scales come out in float32 (a cast, a product and a
        # division were three passes: 1.4 ms a decode step of 64 users over
        # mtgr-8b's 3.57 M items on the H200, 2026-12-03).
        logits = torch.mul(F.linear(outputs, weight), self._item_scale())
        if self.tp_size > 1:
            logits = tensor_model_parallel_all_gather(logits)
        logits = logits[:, : self.config.vocab_size]
        logits[:, 0] = float("-inf")
        logits[:, self.config.unk_token_id] = float("-inf")
        return logits

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = load_weights_by_name(self, weights, self.model_dir)
        self._item_scales = None
        return loaded
