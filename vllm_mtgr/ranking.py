"""MTGR ranking (`MTGRForRanking`) on vLLM's pooling runner.

One request holds a user's profile, long and real-time history, and all
candidates to score; one forward pass scores them all (DESIGN section 3:
token groups, group LayerNorm, the dynamic mixed mask, a fixed attention
normaliser, one head per task). The candidates' final hidden states go
through `ScoringHead`, which `vllm_mtgr.trt` also exports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence, Set

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.layers.pooler.abstract import Pooler
from vllm.model_executor.layers.pooler.common import PoolingParamsUpdate
from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.events import (
    KEY_LIMIT_SLOTS,
    byte_slots,
    decode_position_rows,
    decode_ranking_rows,
    encode_ranking_rows,
    time_slots,
)
from vllm_mtgr.model import (
    HSTUBlock,
    as_tensor_list,
    load_weights_by_name,
    merge_event_embeddings,
)
from vllm_mtgr.multimodal import to_device_by_item
from vllm_mtgr.ranking_multimodal import (
    CANDIDATES_ITEM,
    CONTEXT_ITEM,
    MODALITY,
    ROW_FIELDS,
    RankingDummyInputsBuilder,
    RankingMultiModalProcessor,
    RankingProcessingInfo,
)
from vllm_mtgr.ranking_request import NUM_GROUPS
from vllm_mtgr.scoring_head import ScoringHead


class CandidateMLP(nn.Module):
    """A candidate token: MLP(item embedding, user-item cross features)."""

    def __init__(self, hidden_size: int, num_features: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(hidden_size + num_features, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, items: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.in_proj(torch.cat([items, features.to(items.dtype)], -1)))
        return self.out_proj(hidden)


@support_torch_compile(
    # positions are the [3, tokens] ranking rows (see vllm_mtgr.events).
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0}
)
class MTGRRankingModel(nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MTGRConfig = vllm_config.model_config.hf_config
        d = config.hidden_size
        self.config = config
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
        self.profile_embedding = nn.Embedding(max(config.profile_vocab_size, 1), d)
        self.candidate_mlp = CandidateMLP(d, config.num_cross_features)
        self.layers = nn.ModuleList(
            HSTUBlock(
                config,
                vllm_config.cache_config,
                prefix=f"{prefix}.layers.{i}",
                num_groups=NUM_GROUPS,
            )
            for i in range(config.num_hidden_layers)
        )

    def embed_events(self, items: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x = self.item_embedding(items) * self.embedding_scale
        if self.action_embedding is not None:
            x = x + self.action_embedding(actions)
        return x

    def embed_item(self, kind: int, fields: dict[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings of one ranking item (context, events or candidates)."""
        values = fields["values"]
        if kind == CANDIDATES_ITEM:
            return self.candidate_mlp(self.item_embedding(values), fields["features"])
        if kind == CONTEXT_ITEM:
            profile = self.config.num_profile_features
            return torch.cat(
                [
                    self.profile_embedding(values[:profile]),
                    self.embed_events(values[profile:], fields["actions"][profile:]),
                ]
            )
        return self.embed_events(values, fields["actions"])

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # Every ranking token is replaced by its item's embedding; this only
        # gives the buffer vLLM scatters those into.
        return self.item_embedding(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = (
            inputs_embeds
            if inputs_embeds is not None
            else self.item_embedding(input_ids)
        )
        token_positions, key_times, query_times = decode_position_rows(positions)
        key_limits, groups = decode_ranking_rows(positions)
        x = x + self.position_embedding(token_positions)
        key_slots = time_slots(key_times, x.dtype)
        query_slots = torch.cat(
            [
                time_slots(query_times, x.dtype),
                byte_slots(key_limits, x.dtype, KEY_LIMIT_SLOTS),
            ],
            dim=-1,
        )
        for layer in self.layers:
            x = layer(x, key_slots, query_slots, groups)
        return x


class CandidatePooler(Pooler):
    """Scores every candidate of a request when its prefill completes.

    Candidates are the prompt's `<candidate>` tokens; they are all computed in
    the request's last step (see `vllm_mtgr.ranking_multimodal`). Output per
    request: `[candidates, tasks]` probabilities.
    """

    def __init__(
        self, score: Callable[[torch.Tensor], torch.Tensor], candidate_token_id: int
    ) -> None:
        super().__init__()
        # A callable, not the head module: the weights stay `scoring_head.*`.
        self.score = score
        self.candidate_token_id = candidate_token_id

    def get_supported_tasks(self) -> Set[str]:
        return {"plugin"}

    def get_pooling_updates(self, task: str) -> PoolingParamsUpdate:
        return PoolingParamsUpdate(requires_token_ids=True)

    def forward(self, hidden_states: torch.Tensor, pooling_metadata) -> list:
        cursor = pooling_metadata.get_pooling_cursor()
        scheduled = cursor.num_scheduled_tokens_cpu.tolist()
        chunks = torch.split(hidden_states[: sum(scheduled)], scheduled)
        prompts = pooling_metadata.get_prompt_token_ids_cpu()
        outputs: list[torch.Tensor | None] = []
        for chunk, token_ids, seq_len, count, finished in zip(
            chunks,
            prompts,
            cursor.seq_lens_cpu.tolist(),
            scheduled,
            cursor.is_finished().tolist(),
            strict=True,
        ):
            if not finished:
                outputs.append(None)
                continue
            step_tokens = token_ids[seq_len - count : seq_len]
            rows = (step_tokens == self.candidate_token_id).nonzero().squeeze(-1)
            outputs.append(self.score(chunk[rows.to(chunk.device)]).float())
        return outputs


@MULTIMODAL_REGISTRY.register_processor(
    RankingMultiModalProcessor,
    info=RankingProcessingInfo,
    dummy_inputs=RankingDummyInputsBuilder,
)
class MTGRForRanking(nn.Module, SupportsMultiModal, SupportsMRoPE):
    """MTGR multi-task ranking: every candidate of a user in one forward."""

    is_pooling_model = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MTGRConfig = vllm_config.model_config.hf_config
        self.config = config
        self.model = MTGRRankingModel(vllm_config=vllm_config, prefix=f"{prefix}model")
        self.scoring_head = ScoringHead(
            config.hidden_size,
            config.head_hidden_size,
            len(config.task_names),
            config.layer_norm_eps,
        )
        self.pooler = CandidatePooler(
            self.scoring_head.forward, config.candidate_token_id
        )

    def get_language_model(self) -> nn.Module:
        return self.model

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return None

    def embed_multimodal(self, **kwargs: object) -> Sequence[torch.Tensor]:
        device = self.model.position_embedding.weight.device
        kinds = [int(kind[0]) for kind in as_tensor_list(kwargs["kind"])]
        names = ("values", "actions", "features")
        fields = {
            name: to_device_by_item(as_tensor_list(kwargs[name]), device)
            for name in names
        }
        return [
            self.model.embed_item(kind, {name: fields[name][i] for name in names})
            for i, kind in enumerate(kinds)
        ]

    def embed_input_ids(
        self,
        input_ids: torch.Tensor,
        multimodal_embeddings: Sequence[torch.Tensor] | None = None,
        *,
        is_multimodal: torch.Tensor | None = None,
        **_kwargs: object,
    ) -> torch.Tensor:
        embeds = self.model.embed_input_ids(input_ids)
        return merge_event_embeddings(embeds, multimodal_embeddings, is_multimodal)

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[object]
    ) -> tuple[torch.Tensor, int]:
        length = len(input_tokens)
        rows = {name: np.zeros(length, dtype=np.int64) for name in ROW_FIELDS}
        for feature in mm_features:
            if feature.modality != MODALITY:
                continue
            start = feature.mm_position.offset
            end = start + feature.mm_position.length
            for name in ROW_FIELDS:
                rows[name][start:end] = feature.data[name].data.numpy()
        encoded = encode_ranking_rows(
            rows["positions"],
            rows["key_times"],
            rows["query_times"],
            rows["limits"],
            rows["groups"],
        )
        return torch.from_numpy(encoded), np.int64(0)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: object = None,
        inputs_embeds: torch.Tensor | None = None,
        **_kwargs: object,
    ) -> torch.Tensor:
        return self.model(input_ids, positions, inputs_embeds)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_weights_by_name(self, weights)
