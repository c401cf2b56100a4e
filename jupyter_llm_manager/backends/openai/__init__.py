"""The ``openai`` backend: any OpenAI-compatible server (vLLM, TGI, Ollama, LM Studio, llama.cpp's server).

``backend``: the backend (a client per instance key); ``wire``: what a server
sends back, read within bounds and checked field by field.
"""
