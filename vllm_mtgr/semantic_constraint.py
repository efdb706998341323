"""vLLM's own decoding over a semantic-ID model, kept to real items.

A semantic-ID model directory served as a causal LM (`--hf-overrides
'{"architectures": ["MTGRForCausalLM"]}'`) generates code tokens with vLLM's
sampler and its beam search (`LLM.beam_search`, `use_beam_search`): the
baseline that `vllm_mtgr.semantic` (beam search inside the engine) is
measured against. This logits processor makes each step the same
distribution as there: the log-softmax over the next level's tokens, -inf
for a token that leads to no item, or only to items of the user's history
(`exclude_seen`, on unless a request's `extra_args` switch it off; see
`vllm_mtgr.beams`). With `logprobs_mode="processed_logits"` a beam's summed
logprob is then `vllm_mtgr.semantic`'s score.

A request's depth in its code is its token count modulo the levels (its
history is whole items), so the processor needs nothing beyond the tokens;
each row's trie node is found once per token count, on the host, by a
binary search over the sorted prefixes of each depth.
"""

from __future__ import annotations

import numpy as np
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from vllm_mtgr.beams import allowed_children, excluded_nodes
from vllm_mtgr.code_trie import CodeTrie
from vllm_mtgr.logits_processor import exclude_seen_requested
from vllm_mtgr.semantic_request import catalogue_codes


class _Row:
    """One request: its prompt, its live output list, and what was derived
    from them at `length` tokens."""

    def __init__(self, prompt: np.ndarray, output: list[int], exclude: bool) -> None:
        self.prompt, self.output, self.exclude = prompt, output, exclude
        self.length = -1
        self.depth = 0
        self.node = 0
        self.seen = np.zeros(0, dtype=np.int64)


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
        self.offsets = vocab.offsets.numpy()
        # Each depth's prefixes as mixed-radix keys, sorted: node order (the
        # trie numbers a depth's nodes by their sorted prefixes).
        codes = vocab.codes.numpy().astype(np.int64)
        self.prefix_keys = [
            np.unique(self._keys(codes[:, :depth])) for depth in range(vocab.levels + 1)
        ]
        self.leaf_items = self.trie.items.cpu().numpy()
        self.rows: dict[int, _Row] = {}

    def is_argmax_invariant(self) -> bool:
        return False

    def _new_row(
        self,
        params: SamplingParams,
        prompt_ids: list[int] | None,
        output_ids: list[int],
    ) -> _Row:
        prompt = np.asarray(prompt_ids or [], dtype=np.int64)
        return _Row(prompt, output_ids, exclude_seen_requested(params))

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    def _keys(self, codes: np.ndarray) -> np.ndarray:
        """Code prefixes `[n, depth]` as integers in their lexicographic order."""
        sizes = self.vocab.sizes[: codes.shape[1]]
        radix = [int(np.prod(sizes[level + 1 :])) for level in range(len(sizes))]
        return codes @ np.asarray(radix, dtype=np.int64)

    def _node(self, codes: np.ndarray) -> np.ndarray:
        """The trie nodes of code prefixes `[n, depth]` (all of one depth);
        -1 for a prefix of no item."""
        keys, known = self._keys(codes), self.prefix_keys[codes.shape[1]]
        nodes = np.searchsorted(known, keys).clip(max=len(known) - 1)
        return np.where(known[nodes] == keys, nodes, -1)

    def _refresh(self, row: _Row) -> None:
        tokens = row.prompt
        if row.output:
            tokens = np.concatenate((tokens, np.asarray(row.output, np.int64)))
        levels = self.vocab.levels
        row.length = len(tokens)
        row.depth = len(tokens) % levels
        prefix = tokens[len(tokens) - row.depth :] - self.offsets[: row.depth]
        # A beam past its request's last valid one (vLLM's beam search keeps
        # -inf beams when too few are valid) has no node: all -inf.
        row.node = int(self._node(prefix[None])[0])
        if row.exclude:
            whole = tokens[: len(tokens) - row.depth].reshape(-1, levels)
            leaves = self._node(whole - self.offsets)
            # A prompt of code tokens that are no item's (typed by a user) has
            # nothing seen there.
            row.seen = self.leaf_items[leaves[leaves >= 0]]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        for row in self.rows.values():
            if row.length != len(row.prompt) + len(row.output):
                self._refresh(row)
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
            low, size = int(self.offsets[depth]), self.vocab.sizes[depth]
            logp = logits[indices, low : low + size].float().log_softmax(-1)
            seen = [torch.from_numpy(row.seen) for _, row in group]
            excluded = excluded_nodes(self.trie, seen) if any(map(len, seen)) else None
            allowed = allowed_children(self.trie, nodes, depth, excluded)
            logp = logp.masked_fill(~allowed, float("-inf")).to(logits.dtype)
            constrained[indices, low : low + size] = logp
        return constrained
