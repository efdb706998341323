"""OpenAI-server extensions: completions with events (`/v1/completions`)."""
