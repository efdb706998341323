"""What constrains the items a model may return: seen items excluded from
retrieval (`seen_items`), and semantic-ID beams kept to real items
(`beams`, for the in-engine beam search; `semantic_constraint`, for vLLM's
own)."""
