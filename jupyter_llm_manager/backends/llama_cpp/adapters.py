"""GGUF LoRA adapters for the ``llama_cpp`` backend, checked at registration from the files' headers.

llama-cpp-python applies an adapter when a model loads (``Llama(model_path=,
lora_path=)``), so an adapter there is an instance of its own: its base's
weights with the adapter applied, counted as the base's bytes plus the
adapter's. At registration the adapter file is checked as llama.cpp will
check it at load (``llama_adapter_lora_init``), from the two headers only:
``general.type`` is ``adapter`` and ``adapter.type`` is ``lora``; the
architecture is the base's; every ``NAME.lora_a``/``NAME.lora_b`` pair names
a tensor of the base, with ``lora_a`` of dimensions ``[in, rank]`` and
``lora_b`` of ``[rank, out]`` (ggml order) where the base's ``NAME`` is
``[in, out]``; and the file holds no other tensors but norm vectors
(``*_norm.weight``, which llama.cpp skips): llama-cpp-python 0.3 crashes the
process (SIGSEGV) at the first answer on any other tensor (a
``token_embd.weight``, an ``output.weight``, a whole layer's weight).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config.spec import ModelSpec
from ...errors import ConfigurationError, ModelLoadingError
from ...gguf.files import GgufInfo, gguf_path, read_gguf, read_gguf_shapes

__all__ = ["adapter_file", "adapter_info", "check", "check_on", "own_copy"]

#: Tensors llama.cpp skips in a LoRA file (``llama_adapter_lora_init``: norm vectors are not applied).
_SKIPPED = "_norm.weight"
_CONVERT = "convert a PEFT adapter with llama.cpp's convert_lora_to_gguf.py"


def adapter_file(spec: ModelSpec) -> Path:
    """The adapter's GGUF file on this machine, or a :class:`ConfigurationError` saying it is missing."""
    location = spec.adapter_location or ""
    path = Path(location)
    if path.is_absolute() and path.is_dir():
        raise ConfigurationError(f"{location!r} is a folder (a PEFT adapter?): a llama_cpp base takes a GGUF LoRA "
                                 f"file ({_CONVERT})", model_id=spec.id, key="adapter")
    if path.is_absolute() and path.exists() and not path.is_file():
        raise ConfigurationError(f"the adapter file {location!r} is not a regular file (a FIFO, a device or a "
                                 "socket): give a GGUF LoRA file", model_id=spec.id, key="adapter")
    if not path.is_absolute() or not path.is_file():
        raise ConfigurationError(f"the adapter file {location!r} does not exist: a llama_cpp adapter is a local "
                                 "GGUF LoRA file (relative paths start from the kernel's working directory)",
                                 model_id=spec.id, key="adapter")
    return path


def adapter_info(spec: ModelSpec) -> GgufInfo:
    """The adapter file's header (its tensors' bytes are the adapter's own memory); errors as at registration."""
    path = adapter_file(spec)
    try:
        return read_gguf(path)
    except ModelLoadingError as error:
        raise ConfigurationError(f"{error}; a llama_cpp adapter is a GGUF LoRA file ({_CONVERT})",
                                 model_id=spec.id, key="adapter") from None


def check(spec: ModelSpec, base: ModelSpec) -> None:
    """A one-line :class:`ConfigurationError` when ``spec``'s adapter file cannot run on ``base``; loads nothing.

    A base file not on this machine yet (a Hub file not downloaded) is
    compared when the adapter loads: llama.cpp refuses a mismatch then.
    """
    check_on(spec, gguf_path(base), base.id)


def check_on(spec: ModelSpec, base_path: Path | None, base_name: str) -> Path:
    """The adapter's file, checked to be a GGUF LoRA that fits the base file ``base_path`` (``None``: not here yet).

    Run at registration and again at every load, just before llama.cpp
    reads the file: a file replaced since (by a whole model, a LoRA of
    another rank or made for a larger model) would crash the process at the
    first answer.
    """
    info = adapter_info(spec)
    where: dict[str, Any] = {"model_id": spec.id, "key": "adapter"}
    shown = str(info.path)
    if info.kind != "adapter" or info.adapter_type != "lora":
        what = (f"a {info.kind} (general.type {info.kind!r})" if info.kind != "adapter"
                else f"an adapter of type {info.adapter_type!r}")
        raise ConfigurationError(f"{shown!r} is {what}, not a LoRA adapter: give a GGUF LoRA file ({_CONVERT})",
                                 **where)
    try:
        mine = read_gguf_shapes(info.path)
    except ModelLoadingError as error:
        raise ConfigurationError(f"{error}; a llama_cpp adapter is a GGUF LoRA file ({_CONVERT})", **where) from None
    stray = _stray_tensor(mine)
    if stray:
        raise ConfigurationError(f"{shown!r} holds the tensor {stray[:120]!r}, which is not a LoRA tensor "
                                 f"(NAME.lora_a or NAME.lora_b) and would crash llama.cpp; give a file of LoRA pairs only "
                                 f"({_CONVERT})", **where)
    if base_path is None:
        return info.path
    try:
        base_info = read_gguf(base_path)
        problem = _architecture(info, base_info) or _mismatch(mine, read_gguf_shapes(base_path))
    except ModelLoadingError as error:
        raise ConfigurationError(f"cannot compare the adapter with its base {base_name!r}: {error}",
                                 **where) from None
    if problem:
        raise ConfigurationError(f"the adapter {shown!r} does not fit its base {base_name!r}: {problem}; was it "
                                 "made for another model?", **where)
    return info.path


def _stray_tensor(adapter: dict[str, tuple[int, ...]]) -> str:
    """The first tensor that is neither half of a LoRA pair nor a norm vector llama.cpp skips ('' when none)."""
    for name in adapter:
        target, _, part = name.rpartition(".lora_")
        if not (target and part in ("a", "b")) and not name.endswith(_SKIPPED):
            return name
    return ""


def _architecture(adapter: GgufInfo, base: GgufInfo) -> str:
    if adapter.architecture != base.architecture:
        return f"it is for the {adapter.architecture} architecture, the base is {base.architecture}"
    return ""


def _mismatch(adapter: dict[str, tuple[int, ...]], base: dict[str, tuple[int, ...]]) -> str:
    """Why the adapter's ``lora_a``/``lora_b`` pairs do not fit the base's tensors ('' when they do)."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, shape in adapter.items():
        target, _, part = name.rpartition(".lora_")
        if part in ("a", "b") and target:
            pairs.setdefault(target, {})[part] = shape
    if not pairs:
        return "it holds no LoRA tensors (NAME.lora_a and NAME.lora_b)"
    for target, pair in sorted(pairs.items()):
        problem = _pair_problem(target, pair, base.get(target))
        if problem:
            return problem
    return ""


def _pair_problem(target: str, pair: dict[str, tuple[int, ...]], weight: tuple[int, ...] | None) -> str:
    """What is wrong with one ``lora_a``/``lora_b`` pair on the base tensor ``weight`` ('' when nothing)."""
    if weight is None:
        return f"the base has no tensor {target!r} (another architecture)"
    if set(pair) != {"a", "b"}:
        return f"{target} has lora_{'a' if 'a' in pair else 'b'} without its lora_{'b' if 'a' in pair else 'a'}"
    a, b = pair["a"], pair["b"]
    if len(a) != 2 or len(b) != 2 or len(weight) != 2:
        return f"{target} is not a matrix in both files"
    if a[0] != weight[0] or b[1] != weight[1]:
        return (f"{target} is {list(weight)} in the base but the adapter's pair makes {[a[0], b[1]]} "
                "(another size)")
    if a[1] != b[0]:
        return f"{target}'s lora_a has rank {a[1]} but its lora_b has rank {b[0]}"
    return ""


def own_copy(spec: ModelSpec) -> dict[str, Any]:
    """What the status row shows for an adapter that is its own instance of its base."""
    return {"adapter": spec.adapter_location, "base": f"own copy of {spec.base} with the adapter applied "
            "(llama.cpp applies adapters at load)"}
