"""What a client of the exported scoring head sees: the model's name in a
Triton repository and its tensors' names. No imports: the Triton server
(`triton_server`) runs where torch is not installed."""

MODEL_NAME = "mtgr_scoring_head"
INPUT = "candidates"
OUTPUT = "scores"
