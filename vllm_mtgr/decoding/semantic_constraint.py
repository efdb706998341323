"""vLLM's own decoding over a semantic-ID model, kept to real items.

A semantic-ID model directory served as a causal LM (`--hf-overrides
'{"architectures": ["MTGRForCausalLM"]}'`) generates code tokens with vLLM's
sampler and its beam search (`LLM.beam_search`, `use_beam_search`): the
baseline that `vllm_mtgr.models.semantic` (beam search inside the engine) is
measured against. This logits processor makes each step the same
distribution as there: the log-softmax over the next level's tokens, -inf
for a token that leads to no item, or only to items of the user's history
(`exclude_seen`, on unless a request's `extra_args` switch it off; see
`vllm_mtgr.decoding.beams`). With `logprobs_mode="processed_logits"` a beam's summed
logprob is then `vllm_mtgr.models.semantic`'s score.

A request's depth in its code is its token count modulo the levels (its
history is whole items), so the processor needs nothing beyond the tokens;
each row's trie node and seen items are found once per token count, on
the host trie, a batch per depth.
"""

from __future__ import annotations

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from vllm_mtgr.decoding.beams import allowed_children, excluded_nodes
from vllm_mtgr.decoding.seen_items import exclude_seen_requested
from vllm_mtgr.layout.code_trie import CodeTrie
from vllm_mtgr.requests.semantic import catalogue_codes


class _Row:
    """One request: its prompt, its live output list, and what was derived
    from them at `length` tokens."""

    def __init__(self, prompt: torch.Tensor, output: list[int], exclude: bool) -> None:
        self.prompt, self.output, self.exclude = prompt, output, exclude
        self.length = -1
        self.depth = 0
        self.node = 0
        self.seen = torch.zeros(0, dtype=torch.long)


class SemanticIdConstraint(LogitsProcessor):
    """Level log-softmax over the valid next code tokens; -inf elsewhere."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        exclude_seen_requested(sampling_params)

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        model_config = vllm_config.model_config
        vocab = catalogue_codes(model_config.model, model_config.hf_config.num_items)
        self.vocab = vocab
        self.trie = CodeTrie(vocab.codes, vocab.sizes).to(device)
        self.device, self.pin_memory = device, is_pin_memory
        self.rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def _new_row(
        self,
        params: SamplingParams,
        prompt_ids: list[int] | None,
        output_ids: list[int],
    ) -> _Row:
        prompt = torch.tensor(prompt_ids or [], dtype=torch.long)
        return _Row(prompt, output_ids, exclude_seen_requested(params))

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def _refresh(self, rows: list[_Row]) -> None:
        """Each row's depth, trie node (-1: its prefix is no item's: vLLM's
        beam search keeps -inf beams when too few are valid) and seen items,
        found on the host trie, a batch per depth."""
        vocab, levels = self.vocab, self.vocab.levels
        tokens = [torch.cat([r.prompt, torch.tensor(r.output, dtype=torch.long)])
                  for r in rows]  # fmt: skip
        for row, row_tokens in zip(rows, tokens, strict=True):
            row.length, row.depth = len(row_tokens), len(row_tokens) % levels
        for depth in range(levels):
            group = [i for i, row in enumerate(rows) if row.depth == depth]
            if not group:
                continue
            prefixes = torch.stack([tokens[i][len(tokens[i]) - depth :] for i in group])
            nodes = vocab.trie.find(prefixes - vocab.offsets[:depth]).tolist()
            for i, node in zip(group, nodes, strict=True):
                rows[i].node = node
        seen = [i for i, row in enumerate(rows) if row.exclude]
        if not seen:
            return
        wholes = [tokens[i][: len(tokens[i]) - rows[i].depth].view(-1, levels)
                  for i in seen]  # fmt: skip
        leaves = vocab.trie.find(torch.cat(wholes) - vocab.offsets)
        per_row = leaves.split([len(whole) for whole in wholes])
        for i, row_leaves in zip(seen, per_row, strict=True):
            # Code tokens that are no item's (a prompt typed by a user): not seen.
            rows[i].seen = vocab.trie.item(row_leaves[row_leaves >= 0])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        stale = [row for row in self.rows.values()
                 if row.length != len(row.prompt) + len(row.output)]  # fmt: skip
        if stale:
            self._refresh(stale)
        constrained = torch.full_like(logits, float("-inf"))
        for depth in range(self.vocab.levels):
            group = [
                (i, row) for i, row in self.rows.items()
                if row.depth == depth and row.node >= 0
            ]  # fmt: skip
            if not group:
                continue
            host = torch.tensor([[i, row.node] for i, row in group])
            if self.pin_memory:
                host = host.pin_memory()
            indices, nodes = host.to(self.device, non_blocking=True).T
            low, size = int(self.vocab.offsets[depth]), self.vocab.sizes[depth]
            logp = logits[indices, low : low + size].float().log_softmax(-1)
            seen = [row.seen for _, row in group]
            excluded = excluded_nodes(self.trie, seen) if any(map(len, seen)) else None
            allowed = allowed_children(self.trie, nodes, depth, excluded)
            logp = logp.masked_fill(~allowed, float("-inf")).to(logits.dtype)
            constrained[indices, low : low + size] = logp
        return constrained
