"""What a spec may tell llama.cpp through ``load_kwargs``, and how many threads it runs with.

Some options are the manager's: the file (``source``), the context
(``max_context``, which the estimate and the budget count), the device
(placement), embeddings (``mode``), the log. Writing them in ``load_kwargs``
would load something other than what was planned, or crash the process
(``n_threads: 100000``). So ``n_ctx`` is taken into ``max_context``, thread
counts are checked against the cores this process may use, and the others
are refused with what to write instead.

Without ``n_threads`` in ``load_kwargs``, :class:`ThreadChoice` (in
:mod:`jupyter_llm_manager.support.cpus`, shared with torch's threads) picks
the threads of each request: the physical cores this process may use
(within a container's CPU quota), but no more than the CPUs idle when it
starts, read without waiting.
"""

from __future__ import annotations

from typing import Any

from ...config.spec import ModelSpec
from ...errors import ConfigurationError
from ...support.cpus import CpuSnapshot, ThreadChoice, core_budget, cpu_snapshot, idle_cpus, usable_cores
from ...support.units import brief
from .validation import check_load_kwargs

__all__ = ["MAX_CONTEXT_TOKENS", "CpuSnapshot", "ThreadChoice", "core_budget", "cpu_snapshot", "idle_cpus",
           "normalized", "usable_cores"]

#: The largest context accepted (llama.cpp models train up to about a million tokens).
MAX_CONTEXT_TOKENS = 1 << 21

_OWNED = {
    "model_path": "the file is the spec's source",
    "embedding": "write mode: embed",
    "pooling_type": "write mode: embed (the manager mean-pools)",
    "n_gpu_layers": "the device is the manager's placement: write device: cpu or cuda",
    "main_gpu": "the device is the manager's placement: write device: cuda:N",
    "tensor_split": "the device is the manager's placement: write device: cuda:N",
    "verbose": "llama.cpp's log goes to the jupyter_llm_manager.backends.llama_cpp.backend logger",
    "lora_path": "register the adapter as its own model: adapter=FILE, base=ID",
    "lora_base": "register the adapter as its own model: adapter=FILE, base=ID",
    "lora_scale": "register the adapter as its own model: adapter=FILE, base=ID",
}
_THREADS = ("n_threads", "n_threads_batch")
_SIZES = ("n_batch", "n_ubatch")


def normalized(spec: ModelSpec) -> ModelSpec:
    """``spec`` with ``load_kwargs.n_ctx`` as its ``max_context``; a :class:`ConfigurationError` for the rest."""
    options = dict(spec.load_kwargs)
    for key, instead in _OWNED.items():
        if key in options:
            raise _refused(spec, key, f"the manager sets it: {instead}")
    check_load_kwargs(spec)  # every other option: known to llama.cpp, of its type and range
    cores = usable_cores()
    for key in _THREADS:
        if key in options and not _whole(options[key], 1, cores):
            raise _refused(spec, key, f"got {brief(options[key])}, but this process may use {cores} core(s): "
                                      f"give 1 to {cores}, or leave it out (the manager chooses)")
    for key in _SIZES:
        if key in options and not _whole(options[key], 1, MAX_CONTEXT_TOKENS):
            raise _refused(spec, key, f"got {brief(options[key])}: give a whole number of tokens, 1 or more")
    if "n_ctx" not in options:
        return spec
    context = options.pop("n_ctx")
    if not _whole(context, 16, MAX_CONTEXT_TOKENS):
        raise _refused(spec, "n_ctx", f"got {brief(context)}: write max_context: a whole number of tokens "
                                      f"(16 to {MAX_CONTEXT_TOKENS:,}) or auto")
    if spec.max_context is not None and spec.max_context != context:
        raise _refused(spec, "n_ctx", f"it says {context} but max_context says {spec.max_context}: keep "
                                      "max_context only")
    return spec.with_changes(max_context=context, load_kwargs=options)


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _refused(spec: ModelSpec, key: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"load_kwargs.{key}: {why}", model_id=spec.id, key=f"load_kwargs.{key}")
