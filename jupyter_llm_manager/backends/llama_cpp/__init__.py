"""The ``llama_cpp`` backend: GGUF files run by llama.cpp in this kernel.

``backend``: the backend (load, generate, stream, embed, estimate, free);
``options``: what ``load_kwargs`` may tell llama.cpp, and the threads of each
request; ``adapters``: GGUF LoRA adapters, checked from the files' headers;
``log``: llama.cpp's log, routed to our logger and read for the buffers a load allocated.
"""
