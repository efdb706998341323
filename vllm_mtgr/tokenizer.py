"""The item vocabulary as a real Hugging Face `tokenizer.json`.

Token id == item id: `<pad>` is 0, `item_1 .. item_N` are 1..N, `<unk>` is N + 1
(a semantic-ID model's tokens are its code tokens, `<l0_0> ..`, instead).
Histories are whitespace-separated item tokens ("item_1193 item_661"); the
decoder joins tokens with spaces, so a completion's text is its items.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
# Ranking prompts: one slot per profile feature and per candidate.
PROFILE_TOKEN = "<profile>"
CANDIDATE_TOKEN = "<candidate>"
ITEM_PREFIX = "item_"


def special_token_ids(num_items: int) -> dict[str, int]:
    """The ids after the items: `<unk>`, then the ranking slots (a retrieval
    vocabulary stops after `<unk>`)."""
    return {UNK_TOKEN: num_items + 1, PROFILE_TOKEN: num_items + 2,
            CANDIDATE_TOKEN: num_items + 3}  # fmt: skip


def item_token(item_id: int) -> str:
    return f"{ITEM_PREFIX}{item_id}"


def code_token_names(sizes: list[int]) -> list[str]:
    """A semantic-ID model's token names, `<l{level}_{code}>`, in token order
    (`vllm_mtgr.layout.code_trie.CodeTokens`)."""
    return [f"<l{level}_{code}>" for level, size in enumerate(sizes)
            for code in range(size)]  # fmt: skip


def build_tokenizer(
    num_items: int, ranking: bool = False, names: list[str] | None = None
) -> Tokenizer:
    """`names`: the tokens 1..num_items (default: `item_{id}`)."""
    names = names or [item_token(i) for i in range(1, num_items + 1)]
    if len(names) != num_items:
        raise ValueError(f"{len(names)} token names for {num_items} items")
    vocab = {PAD_TOKEN: 0}
    vocab.update((name, i) for i, name in enumerate(names, start=1))
    special = special_token_ids(num_items)
    vocab.update(special if ranking else {UNK_TOKEN: special[UNK_TOKEN]})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return tokenizer


def write_tokenizer(
    directory: str | Path,
    num_items: int,
    max_length: int,
    ranking: bool = False,
    names: list[str] | None = None,
) -> None:
    """Write tokenizer.json and the small files transformers reads beside it."""
    directory = Path(directory)
    tokenizer = build_tokenizer(num_items, ranking, names)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": PAD_TOKEN,
        "unk_token": UNK_TOKEN,
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


class ItemTokenizer:
    """The `mtgr` tokenizer mode: vLLM's cached Hugging Face tokenizer whose
    `max_chars_per_token` allows for the whitespace between items.

    Before tokenising a text prompt, vLLM rejects it if it has more than
    `max_input_tokens * max_chars_per_token` characters, counting no
    separators: a full-length history of the longest item tokens is then
    refused as too long. Each item may bring one separator and as many
    characters again of extra whitespace; the exact limit in tokens is still
    checked after tokenising.
    """

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from vllm.tokenizers.hf import CachedHfTokenizer

        return allow_separators(CachedHfTokenizer.from_pretrained(*args, **kwargs))


def allow_separators(tokenizer):
    base = type(tokenizer)
    limit = 2 * (tokenizer.max_chars_per_token + 1)

    class SeparatedItemTokenizer(base):
        @property
        def max_chars_per_token(self) -> int:
            return limit

        def __reduce__(self):
            rebuild, args = base.__reduce__(self)[:2]
            return _rebuild_separated, (rebuild, args)

    tokenizer.__class__ = SeparatedItemTokenizer
    return tokenizer


def _rebuild_separated(rebuild, args):
    return allow_separators(rebuild(*args))
