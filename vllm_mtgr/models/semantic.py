"""Semantic-ID generative retrieval (`MTGRForSemanticRetrieval`) with the
beam search inside the engine.

The model is Meta's HSTU (`vllm_mtgr.models.retrieval.MTGRModel`, the same weights as an
item-ID model) over code tokens: an item is `levels` tokens, and the next
item is generated level by level, each level a softmax over that level's
tokens (cosine / temperature), constrained to codes of real items
(`vllm_mtgr.layout.code_trie`). It runs on vLLM's pooling runner: the history is
the prompt (paged KV, prefix caching); the pooler, after the forward that
completes a request's history, runs the whole beam search for every request
that step finishes, at once, and returns `[items, 2]` (item id, summed
log-probability) best first.

Why not vLLM's beam search (`LLM.beam_search`, the OpenAI server's
`use_beam_search`): it makes every beam of every step a request of its own,
which goes through the scheduler, the block hashing and a forward whose
batch mixes all of them, `levels` times; its beams share the history only
through the prefix cache, and nothing keeps them to real items (a logits
processor would have to). Here a step of all beams of all users is one pass
through the layers; no beam token holds a KV slot or a block hash.

How a beam token attends: HSTU's attention is a sum of SiLU terms with a
fixed normaliser, with no softmax across keys, so a beam token's attention
is its sum over the history's cached keys plus its sum over its own code
tokens so far. The first is `kernels.candidate_attention` (the ranking
candidates' kernel: queries against their request's cached pages), its own
key switched off (zero value) and its position bias shifted by how far the
token sits past the history; the second is a few keys per beam, kept per
layer and reordered as beams are chosen, in plain PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from vllm.config import VllmConfig
from vllm.distributed import get_tensor_model_parallel_world_size
from vllm.model_executor.models.interfaces import SupportsMRoPE, SupportsMultiModal
from vllm.multimodal import MULTIMODAL_REGISTRY

from vllm_mtgr.attention import KERNEL_BLOCK_MULTIPLE
from vllm_mtgr.config import MTGRConfig
from vllm_mtgr.decoding.beams import BeamStep, Excluded, excluded_nodes, next_beams
from vllm_mtgr.kernels import candidate_attention
from vllm_mtgr.kernels.paged_torch import KernelBiasTables, kernel_bias_tables
from vllm_mtgr.layout.code_trie import CodeTrie
from vllm_mtgr.layout.positions import (
    decode_beam_rows,
    decode_position_rows,
    encode_position_rows,
    set_beam_row,
)
from vllm_mtgr.models.hstu import (
    FinishedStepPooler,
    PoolerStepInput,
    load_weights_by_name,
)
from vllm_mtgr.models.retrieval import HistoryEventsInput, MTGRModel
from vllm_mtgr.multimodal.events import events_from_features
from vllm_mtgr.multimodal.semantic import (
    BEAM_FIELD,
    SemanticDummyInputsBuilder,
    SemanticMultiModalProcessor,
    SemanticProcessingInfo,
)
from vllm_mtgr.requests.semantic import catalogue_codes


class BeamRequests:
    """The requests of one beam search, on the device."""

    def __init__(
        self,
        lengths: torch.Tensor,
        times: torch.Tensor,
        widths: list[int],
        block_table: torch.Tensor,
        excluded: Excluded | None,
    ) -> None:
        self.lengths = lengths  # int32 [R]: history tokens
        self.times = times  # int64 [R]: the request time
        self.widths = widths
        self.block_table = block_table  # [R, blocks]
        self.excluded = excluded  # the users' seen items, out of the search


@MULTIMODAL_REGISTRY.register_processor(
    SemanticMultiModalProcessor,
    info=SemanticProcessingInfo,
    dummy_inputs=SemanticDummyInputsBuilder,
)
class MTGRForSemanticRetrieval(
    PoolerStepInput, HistoryEventsInput, nn.Module, SupportsMultiModal, SupportsMRoPE
):
    """HSTU over semantic-ID tokens: constrained beam search per request."""

    is_pooling_model = True

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        if get_tensor_model_parallel_world_size() > 1:
            raise ValueError(
                "MTGRForSemanticRetrieval runs with tensor parallel size 1"
            )
        config: MTGRConfig = vllm_config.model_config.hf_config
        self.config = config
        self.model_dir = vllm_config.model_config.model
        self.model = MTGRModel(vllm_config=vllm_config, prefix=f"{prefix}model")
        with torch.device("cpu"):
            self.vocab = catalogue_codes(self.model_dir, config.num_items)
        # Output per finished request: `[items, 2]` float64 (item id, summed
        # log-probability), best first. The prompt's tokens: the seen items.
        self.pooler = FinishedStepPooler(self.search_finished, requires_token_ids=True)
        self._layer_name = self.model.layers[0].attn.layer_name
        max_seqs = vllm_config.scheduler_config.max_num_seqs
        self._profile_requests = max_seqs
        # Made on first use after the weights are final (see `load_weights`).
        self._trie: CodeTrie | None = None
        self._token_table: torch.Tensor | None = None
        self._shifted: dict[tuple[int, int], tuple[torch.Tensor, KernelBiasTables]] = {}
        # (positions, attention metadata) of the step's forward, for the pooler.
        self._step: tuple[torch.Tensor, object] | None = None

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[object]
    ) -> tuple[torch.Tensor, int]:
        key_times, query_times, _ = events_from_features(len(input_tokens), mm_features)
        rows = encode_position_rows(len(input_tokens), key_times, query_times)
        beams = [f.data[BEAM_FIELD].data for f in mm_features if BEAM_FIELD in f.data]
        if beams:
            width, exclude_seen = (int(v) for v in beams[-1])
            set_beam_row(rows, width, bool(exclude_seen))
        return torch.from_numpy(rows), np.int64(0)

    def search_finished(
        self,
        finished: list[bool],
        last_tokens: torch.Tensor,
        hidden_states: torch.Tensor,
        pooling_metadata,
    ) -> list[torch.Tensor | None]:
        """Each finished request's beam (`FinishedStepPooler`)."""
        step = self.finished_step(finished, last_tokens)
        if step is None:
            return [self._profile_search()] * len(finished)
        positions, metadata, rows, index = step
        outputs: list[torch.Tensor | None] = [None] * len(finished)
        if not rows:
            return outputs
        last = last_tokens[index]
        widths, exclude = decode_beam_rows(positions[2, last])
        widths = widths.tolist()
        if 0 in widths:  # the engine's warm-up: dummy requests, no beam
            return [self._profile_search()] * len(finished)
        excluded = None
        if exclude.any():
            # Both vLLM versions fill the host copy of the prompts.
            prompts = pooling_metadata.get_prompt_token_ids_cpu()
            excluded = self._excluded(
                [prompts[r] if ex else prompts[r][:0] for r, ex in
                 zip(rows, exclude.tolist(), strict=True)],
                index.device,
            )  # fmt: skip
        requests = BeamRequests(
            lengths=pooling_metadata.prompt_lens[rows].to(index.device, torch.int32),
            times=decode_position_rows(positions)[2][last],
            widths=widths,
            block_table=metadata.block_table[index.to(metadata.block_table.device)],
            excluded=excluded,
        )
        kv_caches = [layer.attn.kv_cache for layer in self.model.layers]
        found = self.beam_search(hidden_states[last], requests, kv_caches)
        for row, result in zip(rows, found, strict=True):
            outputs[row] = result
        return outputs

    def beam_search(
        self,
        history_states: torch.Tensor,
        requests: BeamRequests,
        kv_caches: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        """`[items, 2]` (item, score) per request, best first: the beam
        search over the trie from each request's last history state
        (`[R, D]`), its history's K/V in `kv_caches` (one per layer)."""
        vocab, trie = self.vocab, self._device_trie()
        num_requests, width = len(requests.widths), max(requests.widths)
        device = history_states.device
        widths = torch.tensor(requests.widths, device=device)
        step = BeamStep(
            nodes=torch.zeros(num_requests, 1, dtype=torch.long, device=device),
            scores=torch.zeros(num_requests, 1, device=device),
            parents=torch.zeros(num_requests, 1, dtype=torch.long, device=device),
            tokens=torch.zeros(num_requests, 1, dtype=torch.long, device=device),
        )
        states = history_states
        own: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: beam K, V
        for depth in range(vocab.levels):
            if depth:
                states, own = self._beam_pass(step, depth, requests, own, kv_caches)
            logp = self._level_logp(states, depth).view(num_requests, -1,
                                                        vocab.sizes[depth])  # fmt: skip
            step = next_beams(trie, depth, step.nodes, step.scores, logp, width,
                              widths, requests.excluded)  # fmt: skip
        items = trie.item(step.nodes).double()
        found = torch.stack([items, step.scores.double()], dim=-1)
        valid = step.scores.isfinite().sum(1).tolist()
        return [found[r, :count] for r, count in enumerate(valid)]

    def _beam_pass(
        self,
        step: BeamStep,
        depth: int,
        requests: BeamRequests,
        own: list[tuple[torch.Tensor, torch.Tensor]],
        kv_caches: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The layers over every beam's last code token (level depth - 1, at
        position history + depth - 1): `[R * B, D]` states, and each
        layer's beam K/V `[R * B, depth, heads, d]` so far."""
        model = self.model
        num_requests, beams = step.nodes.shape
        rows = num_requests * beams
        device = step.nodes.device
        tokens = step.tokens + int(self.vocab.offsets[depth - 1])
        lengths = requests.lengths.repeat_interleave(beams)
        x = model.embed_events(tokens.flatten())
        x = x + model.position_embedding(lengths.long() + depth - 1)
        times = requests.times.repeat_interleave(beams)
        starts = torch.arange(num_requests + 1, device=device, dtype=torch.int32)
        starts = starts * beams
        if own:  # each beam's own-token K/V so far are its parent's rows
            before = own[0][0].shape[0] // num_requests  # beams of the last step
            first = torch.arange(num_requests, device=device)[:, None] * before
            parent_rows = (first + step.parents).flatten()
        new_own = []
        for index, (layer, kv_cache) in enumerate(
            zip(model.layers, kv_caches, strict=True)
        ):
            h, dqk, dv = layer.heads, layer.dqk, layer.dv
            u, v, q, k = layer.project(x)
            q, k, v = q.view(rows, h, dqk), k.view(rows, h, dqk), v.view(rows, h, dv)
            attention = x.new_empty(rows, h, dv)
            position_weight, tables = self._shifted_bias(index, depth - 1)
            # The history's keys; the beam's own key is in its tokens below,
            # so the kernel's own term is switched off by a zero value.
            candidate_attention(
                q, k, torch.zeros_like(v), times, lengths, starts,
                requests.block_table, kv_cache, position_weight,
                layer.attn.relative_bias.time_weight, layer.params, attention,
                bias_tables=tables,
            )  # fmt: skip
            if own:
                keys = torch.cat([own[index][0][parent_rows], k[:, None]], 1)
                values = torch.cat([own[index][1][parent_rows], v[:, None]], 1)
            else:
                keys, values = k[:, None], v[:, None]
            attention = attention + self._own_attention(layer, q, keys, values)
            new_own.append((keys, values))
            x = layer.finish(x, attention, u)
        return x, new_own

    def _own_attention(
        self, layer, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """`[rows, heads, dv]`: each beam token over its beam's code tokens
        (`keys`/`values` `[rows, depth, heads, d]`, the last its own), all at
        the request time (time bucket 0), at distances -(depth - 1) .. 0."""
        depth = keys.shape[1]
        bias = layer.attn.relative_bias
        n = layer.params.max_len
        distance = torch.arange(depth, device=q.device) - (depth - 1)
        rab = bias.position_weight[distance + n - 1] + bias.time_weight[0]
        scores = torch.einsum("rhd,rjhd->rhj", q.float(), keys.float()) + rab.float()
        weights = F.silu(scores) / layer.params.normalizer
        return torch.einsum("rhj,rjhd->rhd", weights, values.float()).to(q.dtype)

    def _shifted_bias(
        self, layer_index: int, shift: int
    ) -> tuple[torch.Tensor, KernelBiasTables]:
        """A layer's position table as seen from `shift` positions past the
        history (entry i is the bias of i - shift), for the candidates'
        kernel, which places every query right after the history."""
        key = (layer_index, shift)
        if key not in self._shifted:
            bias = self.model.layers[layer_index].attn.relative_bias
            table = bias.position_weight.detach()
            index = (torch.arange(len(table), device=table.device) - shift).clamp(min=0)
            shifted = table[index]
            self._shifted[key] = (
                shifted,
                kernel_bias_tables(shifted, bias.time_weight.detach()),
            )
        return self._shifted[key]

    def _level_logp(self, states: torch.Tensor, depth: int) -> torch.Tensor:
        """Log-softmax over level `depth`'s tokens of cosine / temperature."""
        table = self._normalized_tokens()
        low = int(self.vocab.offsets[depth])
        eps = self.config.layer_norm_eps
        out = states / states.norm(dim=-1, keepdim=True).clamp(min=eps)
        logits = out.float() @ table[low : low + self.vocab.sizes[depth]].T
        return (logits / self.config.logit_temperature).log_softmax(-1)

    def _normalized_tokens(self) -> torch.Tensor:
        if self._token_table is None:
            weight = self.model.item_embedding.weight.float()
            norms = weight.norm(dim=-1, keepdim=True)
            self._token_table = weight / norms.clamp(min=self.config.layer_norm_eps)
        return self._token_table

    def _device_trie(self) -> CodeTrie:
        if self._trie is None:
            device = self.model.position_embedding.weight.device
            vocab = self.vocab
            self._trie = CodeTrie(vocab.codes, vocab.sizes).to(device)
        return self._trie

    def _excluded(self, prompts: list[torch.Tensor], device: torch.device) -> Excluded:
        """Each request's history items (from its code tokens, `prompts` on
        the host), out of its search (`beams.excluded_nodes`)."""
        trie, vocab = self._device_trie(), self.vocab
        counts = [len(tokens) // vocab.levels for tokens in prompts]
        codes = torch.cat(prompts).to(device).long().view(-1, vocab.levels)
        codes = codes - vocab.offsets.to(device)
        nodes = torch.zeros(len(codes), dtype=torch.long, device=device)
        for level in range(vocab.levels):
            nodes = trie.advance(nodes, codes[:, level], level)
        return excluded_nodes(trie, list(trie.item(nodes).split(counts)))

    def _profile_search(self) -> torch.Tensor:
        """The widest beam search of a full batch, over empty histories:
        memory profiling sees its activations. One dummy request's result."""
        model = self.model
        device = model.position_embedding.weight.device
        count = self._profile_requests
        zeros = torch.zeros(count, dtype=torch.int32, device=device)
        requests = BeamRequests(
            lengths=zeros,  # no history keys: the cache is never read
            times=zeros.long(),
            widths=[max(self.config.max_beam_width, 1)] * count,
            block_table=torch.zeros(count, 1, dtype=torch.int32, device=device),
            excluded=None,
        )
        layer = model.layers[0]
        width = 2 * layer.params.cache_head_size
        dtype = model.position_embedding.weight.dtype
        empty = torch.zeros(1, layer.heads, KERNEL_BLOCK_MULTIPLE, width, dtype=dtype,
                            device=device)  # fmt: skip
        states = torch.zeros(count, self.config.hidden_size, dtype=dtype, device=device)
        found = self.beam_search(states, requests, [empty] * len(model.layers))
        return found[0]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = load_weights_by_name(self, weights, self.model_dir)
        self._token_table = None
        self._shifted.clear()
        return loaded
