"""The ``transformers`` backend: the backend itself, GGUF files through transformers, their converted copies,
and what a model needs around it (imports, dtypes, prompts, streaming)."""
