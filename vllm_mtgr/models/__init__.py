"""The models vLLM runs: shared HSTU layers and vLLM glue (`hstu`),
retrieval (`retrieval`), ranking with its candidates and scoring head
(`ranking`, `candidates`, `scoring_head`), semantic-ID retrieval
(`semantic`)."""
