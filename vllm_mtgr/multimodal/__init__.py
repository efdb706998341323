"""How a history reaches vLLM: the "events" modality (`events`: chunks,
hashes, the processor) and the ranking and semantic-ID modalities built on
it (`ranking`, `semantic`)."""
