"""MTGR ranking (`MTGRForRanking`) on vLLM's pooling runner.

One request holds a user's profile, long and real-time history, and the
candidates to score (docs/DESIGN.md section 3: token groups, group LayerNorm, the
dynamic mixed mask, a fixed attention normaliser, one head per task). The
history is the prompt: vLLM's forward computes it into the paged KV cache,
reusing a returning user's cached blocks. The candidates are not tokens
(`vllm_mtgr.models.candidates` says why and how they reach the worker): the pooler
runs all candidates of the requests a step finishes through the layers at
once, each layer's attention one launch over the history pages, and scores
them with `ScoringHead`, which `vllm_mtgr.trt` also exports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vllm.compilation.decorators import support_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_mtgr.attention import KERNEL_BLOCK_MULTIPLE
from vllm_mtgr.config import NUM_GROUPS, MTGRConfig
from vllm_mtgr.kernels import candidate_attention
from vllm_mtgr.layout.positions import (
    decode_position_rows,
    decode_ranking_rows,
    decode_tickets,
    encode_ranking_rows,
)
from vllm_mtgr.layout.slots import KEY_LIMIT_SLOTS, byte_slots, time_slots
from vllm_mtgr.models.candidates import (
    ROWS_PER_PASS,
    CandidateBatch,
    CandidateRegistry,
    passes,
)
from vllm_mtgr.models.hstu import (
    EventEmbeddings,
    FinishedStepPooler,
    HistoryPromptInput,
    HSTUBlock,
    PoolerStepInput,
    load_weights_by_name,
)
from vllm_mtgr.models.scoring_head import ScoringHead
from vllm_mtgr.multimodal.events import as_tensor_list
from vllm_mtgr.multimodal.ranking import (
    CANDIDATE_FIELDS,
    CONTEXT_ITEM,
    MODALITY,
    ROW_FIELDS,
    RankingDummyInputsBuilder,
    RankingMultiModalProcessor,
    RankingProcessingInfo,
)
from vllm_mtgr.requests.ranking import CANDIDATE


class CandidateMLP(nn.Module):
    """A candidate's input state: MLP(item embedding, user-item cross features)."""

    def __init__(self, hidden_size: int, num_features: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(hidden_size + num_features, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, items: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        hidden = F.silu(self.in_proj(torch.cat([items, features.to(items.dtype)], -1)))
        return self.out_proj(hidden)


@support_torch_compile(
    # positions are the [3, tokens] ranking rows (see vllm_mtgr.layout.positions).
    dynamic_arg_dims={"input_ids": 0, "positions": -1, "inputs_embeds": 0}
)
class MTGRRankingModel(EventEmbeddings, nn.Module):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MTGRConfig = vllm_config.model_config.hf_config
        d = config.hidden_size
        self.config = config
        self.init_event_embeddings(config, prefix)
        self.profile_embedding = nn.Embedding(max(config.profile_vocab_size, 1), d)
        self.candidate_mlp = CandidateMLP(d, config.num_cross_features)
        self.layers = nn.ModuleList(
            HSTUBlock(
                config,
                vllm_config.cache_config,
                prefix=f"{prefix}.layers.{i}",
                num_groups=NUM_GROUPS,
                quant_config=vllm_config.quant_config,
            )
            for i in range(config.num_hidden_layers)
        )

    def embed_items(
        self, values: torch.Tensor, actions: torch.Tensor, is_profile: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings of ranking items joined (contexts, real-time
        events): a profile feature's row from its table, an event's as
        `embed_events`. Both lookups run over all rows, with the other
        kind's ids at 0: two gathers for the whole batch, not a few small
        kernels per item."""
        events = self.embed_events(values.masked_fill(is_profile, 0), actions)
        profile = self.profile_embedding(values.masked_fill(~is_profile, 0))
        return torch.where(is_profile[:, None], profile.to(events.dtype), events)

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

    def forward_candidates(
        self, batch: CandidateBatch, kv_caches: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """Final hidden states `[C, D]` of a batch's candidates, over the
        requests' histories in `kv_caches` (one per layer)."""
        x = self.candidate_mlp(self.item_embedding(batch.items), batch.features)
        x = x + self.position_embedding(batch.limits)
        for layer, kv_cache in zip(self.layers, kv_caches, strict=True):
            # The projection's SiLU is left to its readers (the attention and
            # the gated norm), each reading its part once: a pass over the
            # [C, 4 * heads * d] projection the fewer per layer.
            u, v, q, k = layer.project(x, CANDIDATE, activate=False)
            rows, h, dqk, dv = x.shape[0], layer.heads, layer.dqk, layer.dv
            attention = x.new_empty(rows, h, dv)
            bias = layer.attn.relative_bias
            candidate_attention(
                q.view(rows, h, dqk), k.view(rows, h, dqk), v.view(rows, h, dv),
                batch.times, batch.limits, batch.start, batch.block_table,
                kv_cache, bias.position_weight, bias.time_weight, layer.params,
                attention, bias_tables=bias.kernel_tables, silu_inputs=True,
            )  # fmt: skip
            x = layer.finish(x, attention, u, CANDIDATE, silu_gate=True)
        return x


@MULTIMODAL_REGISTRY.register_processor(
    RankingMultiModalProcessor,
    info=RankingProcessingInfo,
    dummy_inputs=RankingDummyInputsBuilder,
)
class MTGRForRanking(
    PoolerStepInput, HistoryPromptInput, nn.Module, SupportsMultiModal, SupportsMRoPE
):
    """MTGR multi-task ranking: every candidate of a user in one forward."""

    is_pooling_model = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: MTGRConfig = vllm_config.model_config.hf_config
        self.config = config
        self.model_dir = vllm_config.model_config.model
        self.model = MTGRRankingModel(vllm_config=vllm_config, prefix=f"{prefix}model")
        self.scoring_head = ScoringHead.from_config(config)
        # Output per finished request: `[candidates, tasks]` probabilities.
        self.pooler = FinishedStepPooler(self.score_finished, requires_token_ids=False)
        max_seqs = vllm_config.scheduler_config.max_num_seqs
        self.candidates = CandidateRegistry(capacity=8 * max_seqs)
        self._profile_rows = min(ROWS_PER_PASS, max_seqs * config.max_candidates)
        self._layer_name = self.model.layers[0].attn.layer_name
        # (positions, attention metadata) of the step's forward, for the pooler.
        self._step: tuple[torch.Tensor, object] | None = None

    def embed_multimodal(self, **kwargs: object) -> Sequence[torch.Tensor]:
        kinds = [int(kind[0]) for kind in as_tensor_list(kwargs["kind"])]
        values = as_tensor_list(kwargs["values"])
        lengths = [len(item) for item in values]
        # A context item's first rows are its profile features.
        profile = self.config.num_profile_features
        is_profile = torch.cat([
            torch.arange(length) < (profile if kind == CONTEXT_ITEM else 0)
            for kind, length in zip(kinds, lengths, strict=True)
        ])  # fmt: skip
        actions = torch.cat(as_tensor_list(kwargs["actions"]))
        rows = self.items_to_device(
            torch.stack([torch.cat(values), actions, is_profile.long()]).numpy()
        )
        embeds = self.model.embed_items(rows[0], rows[1], rows[2].bool())
        return list(embeds.split(lengths))

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[object]
    ) -> tuple[torch.Tensor, int]:
        length = len(input_tokens)
        rows = {name: np.zeros(length, dtype=np.int64) for name in ROW_FIELDS}
        candidates: Mapping[str, np.ndarray] | None = None
        for feature in mm_features:
            if feature.modality != MODALITY:
                continue
            start = feature.mm_position.offset
            end = start + feature.mm_position.length
            data = feature.data
            for name in ROW_FIELDS:
                rows[name][start:end] = data[name].data.numpy()
            if len(data["candidate_items"].data):
                candidates = {
                    name: data[name].data.numpy() for name in CANDIDATE_FIELDS
                }
        if candidates is None:
            raise ValueError("a ranking request reached the model without candidates")
        encoded = encode_ranking_rows(
            rows["positions"],
            rows["key_times"],
            rows["query_times"],
            rows["limits"],
            rows["groups"],
            ticket=self.candidates.file(candidates),
        )
        return torch.from_numpy(encoded), np.int64(0)

    def score_finished(
        self, finished: list[bool], last_tokens: torch.Tensor, *_pooler_args: object
    ) -> list[torch.Tensor | None]:
        """Candidates' scores of each finished request (`FinishedStepPooler`)."""
        step = self.finished_step(finished, last_tokens)
        if step is None:
            return [self._profile_candidates()] * len(finished)
        positions, metadata, rows, index = step
        outputs: list[torch.Tensor | None] = [None] * len(finished)
        if not rows:
            return outputs
        tickets = decode_tickets(positions[2, last_tokens[index]]).tolist()
        if 0 in tickets:  # the engine's warm-up: dummy requests, no candidates
            return [self._profile_candidates()] * len(finished)
        entries = [self.candidates.take(ticket) for ticket in tickets]
        block_table = metadata.block_table[index.to(metadata.block_table.device)]
        kv_caches = [layer.attn.kv_cache for layer in self.model.layers]
        for group in passes([len(entry["candidate_items"]) for entry in entries]):
            batch = CandidateBatch.build(
                entries[group], block_table[group], positions.device
            )
            hidden = self.model.forward_candidates(batch, kv_caches)
            scores = self.scoring_head(hidden).float()
            for row, score in zip(rows[group], scores.split(batch.counts), strict=True):
                outputs[row] = score
        return outputs

    def _profile_candidates(self) -> torch.Tensor:
        """The largest candidate pass, over empty histories: memory profiling
        sees its activations. Returns one dummy request's scores."""
        device = self.model.position_embedding.weight.device
        rows = self._profile_rows
        zeros = torch.zeros(rows, dtype=torch.int64, device=device)
        batch = CandidateBatch(
            items=zeros + 1,
            features=torch.zeros(rows, self.config.num_cross_features, device=device),
            times=zeros,
            limits=zeros.int(),  # no history keys: the cache is never read
            start=torch.tensor([0, rows], dtype=torch.int32, device=device),
            block_table=torch.zeros(1, 1, dtype=torch.int32, device=device),
            counts=[rows],
        )
        layer = self.model.layers[0]
        width = 2 * layer.params.cache_head_size
        dtype = self.model.position_embedding.weight.dtype
        empty = torch.zeros(1, layer.heads, KERNEL_BLOCK_MULTIPLE, width, dtype=dtype,
                            device=device)  # fmt: skip
        hidden = self.model.forward_candidates(batch, [empty] * len(self.model.layers))
        return self.scoring_head(hidden[:1]).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_weights_by_name(self, weights, self.model_dir)
