"""GGUF files (llama.cpp's single-file format): finding a spec's file, and reading its header without a tensor.

``files``: where a spec's file is and what its header says (sizes, context,
the KV cache at any length); ``header``: the bounded reader of the header itself.
"""
