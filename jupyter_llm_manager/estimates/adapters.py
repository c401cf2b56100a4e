"""LoRA adapter files: where they are, what they weigh, and whether their config tells the truth about them.

PEFT sizes the matrices it allocates from ``adapter_config.json`` (``r``, or
``rank_pattern`` per module) and only then reads the weights: a config saying
``"r": 1000000`` beside rank-4 weights allocates gigabytes before the load
fails. So the config is checked against the shapes in the weights' header
first (:func:`check_adapter_files`), at registration and again before every
load; nothing but regular files is read, within a size limit, and whatever is
wrong is one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config.spec import ModelSpec
from ..errors import ModelLoadingError
from ..gguf.files import read_gguf
from ..reports import MemoryEstimate
from ..support.regular_files import load_json, open_regular
from ..support.units import excerpt, format_bytes
from .adapter_fields import check_field_types, shown
from .safetensors import read_safetensors_header, tensor_bytes

__all__ = ["MAX_RANK", "AdapterFiles", "adapter_folder", "adapter_slice", "check_adapter_files",
           "read_adapter_config", "targeted_without_weights", "weight_shapes", "with_adapter"]

#: The largest LoRA rank believed (adapters use 4 to 256; a full-rank one of a large model 8,192).
MAX_RANK = 65536
_MAX_CONFIG = 1024 * 1024
#: The largest ``r`` believed beside weights of lower rank when ``rank_pattern`` gives every weighted module its
#: rank: a default left in the config, which sizes only modules without weights.
_UNUSED_RANK = 256
_MAX_PATTERNS = 4096
_MAX_PATTERN = 256
_PREFIX = "base_model.model."  # where PEFT saves the wrapped model's tensors
_SLOW_PATTERN = re.compile(r"[*+?{}()\[\]]")  # repetition, groups, classes: a pattern could take exponential time
_CONFIG = "adapter_config.json"
_WEIGHTS = "adapter_model.safetensors"
_BIN = "adapter_model.bin"  # PEFT's older format: a torch pickle, read with weights_only and mmap (nothing allocated)

AdapterFiles = tuple[dict[str, Any], dict[str, tuple[int, ...]] | None]  # the config, and the weights' shapes
_MAX_DIGITS = 300  # an alpha longer than this is no float (math.isfinite would raise OverflowError)


def adapter_folder(spec: ModelSpec) -> Path | None:
    """A PEFT adapter's folder on this machine: the local folder, or a Hub adapter in the cache; else ``None``."""
    location = spec.adapter_location
    if location is None:
        return None
    if Path(location).is_absolute():
        return Path(location) if Path(location).is_dir() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(location, _CONFIG)
    return Path(found).parent if isinstance(found, str) else None


def read_adapter_config(folder: Path) -> dict[str, Any]:
    """The folder's ``adapter_config.json`` as a JSON object; ``ValueError``/``OSError`` in one line."""
    config = load_json(folder / _CONFIG, _MAX_CONFIG)
    if not isinstance(config, dict):
        raise ValueError(f"{_CONFIG} is not a JSON object")
    return config


def check_adapter_files(folder: Path) -> AdapterFiles:
    """The config and the weights' shapes of a PEFT LoRA folder, checked to agree; ``ValueError`` in one line.

    ``r`` and the ranks of ``rank_pattern`` are whole numbers from 1 to
    :data:`MAX_RANK`; every LoRA pair in the weights has the rank the config
    gives its module, and ``r`` is no larger than the largest rank in the
    weights (a rank only the config has would be allocated for modules with
    no weights: memory the estimate cannot see), unless ``rank_pattern``
    covers every module of the weights and ``r`` is at most 256 (a default
    left in the config). Every entry of a ``target_modules`` list and every
    ``rank_pattern`` key names a module the weights hold a pair for: PEFT
    would otherwise make matrices for modules without weights (at the
    pattern's rank: memory the weights' size does not show). ``lora_alpha``
    and ``alpha_pattern`` are numbers, and the fields PEFT reads have the
    types it needs (:func:`~.adapter_fields.check_field_types`). The weights
    are ``adapter_model.safetensors`` (its header) or else
    ``adapter_model.bin`` (read by torch with ``weights_only`` and ``mmap``:
    shapes, no data). Without either there is nothing to compare (``None``):
    the load checks it.
    """
    config = read_adapter_config(folder)
    rank = _rank(config.get("r", 8), "r")
    patterns = _patterns(config.get("rank_pattern"), "rank_pattern")
    ranks = {key: _rank(value, f"rank_pattern[{key!r}]") for key, value in patterns.items()}
    _number(config.get("lora_alpha", 8), "lora_alpha")
    for key, value in _patterns(config.get("alpha_pattern"), "alpha_pattern").items():
        _number(value, f"alpha_pattern[{key!r}]")
    check_field_types(config)
    shapes = weight_shapes(folder)
    if shapes is None:
        return config, None
    found = _ranks_in(shapes)
    _check_targets(config.get("target_modules"), ranks, found)
    for module, seen in sorted(found.items()):
        wanted = ranks.get(_pattern_key(ranks, module), rank) if ranks else rank
        if seen != wanted:
            source = "rank_pattern" if ranks and _pattern_key(ranks, module) in ranks else "r"
            raise ValueError(f"{_CONFIG} gives {module} rank {wanted:,} ({source}) but its weights have rank "
                             f"{seen:,}: the config does not belong to these weights")
    covered = bool(ranks) and all(_pattern_key(ranks, module) in ranks for module in found)
    if found and rank > max(found.values()) and not (covered and rank <= _UNUSED_RANK):
        raise ValueError(f"{_CONFIG} says r {rank:,} but no LoRA weights have a rank above "
                         f"{max(found.values()):,}: the config does not belong to these weights")
    return config, shapes


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]] | None:
    """The shapes of the adapter's tensors, from ``adapter_model.safetensors`` or else ``adapter_model.bin``."""
    weights = folder / _WEIGHTS
    if weights.exists():
        return {name: tuple(info["shape"]) for name, info in read_safetensors_header(weights).items()}
    if (folder / _BIN).exists():
        return {name: shape for name, (shape, _) in _bin_tensors(folder / _BIN).items()}
    return None


def _bin_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], int]]:
    """Name → (shape, bytes) of a torch-saved state dict, its storage mapped, never read (``ValueError`` in a line).

    ``weights_only`` unpickles tensors and containers only (no code runs);
    ``mmap`` maps the data instead of reading it, so a lying config is
    caught before memory is taken. The old, non-zip format cannot be mapped:
    it is refused.
    """
    import os

    os.close(open_regular(path))  # a FIFO or a device: refused before torch opens it
    try:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - torch's many load errors: all mean 'cannot be read safely'
        said = " ".join(str(error).split())[:160] or type(error).__name__
        raise ValueError(f"{_BIN} cannot be read without loading it ({said}): save the adapter with safetensors "
                         "(peft_model.save_pretrained does by default)") from None
    if not isinstance(state, dict):
        raise ValueError(f"{_BIN} holds a {type(state).__name__}, not a state dict of tensors")
    return {str(name): (tuple(tensor.shape), int(tensor.nbytes)) for name, tensor in state.items()
            if isinstance(tensor, torch.Tensor)}


def _check_targets(targets: Any, ranks: dict[str, int], found: dict[str, int]) -> None:
    """Every ``target_modules`` entry (a list) and every ``rank_pattern`` key names a module with weights."""
    if not found:
        return
    for target in targets if isinstance(targets, list) else ():
        if not any(module == target or module.endswith(f".{target}") for module in found):
            raise ValueError(f"{_CONFIG} targets {excerpt(target, 60)!r} but the weights hold no LoRA pair for it: "
                             "PEFT would make matrices the weights do not fill (the config does not belong to "
                             "these weights)")
    for key, rank in ranks.items():
        if not any(re.match(rf"(.*\.)?({key})$", module) for module in found):
            raise ValueError(f"{_CONFIG}: rank_pattern gives {excerpt(key, 60)!r} rank {rank:,} but the weights hold "
                             "no LoRA pair for it: the config does not belong to these weights")


def targeted_without_weights(config: dict[str, Any], weights: dict[str, tuple[int, ...]],
                             base: dict[str, tuple[int, ...]]) -> str:
    """A module of the base that ``config``'s ``target_modules`` list makes a LoRA pair for, yet the weights hold
    none for ('' when none): PEFT would size it by ``r`` or ``rank_pattern``, unseen by the estimate.

    Checked for a list of names only, with no ``layers_to_transform``,
    ``layers_pattern`` or ``exclude_modules`` narrowing it (PEFT's own
    matching; a regular expression is not run on the base's names here).
    """
    targets = config.get("target_modules")
    if not isinstance(targets, list) or any(config.get(name) is not None for name in
                                            ("layers_to_transform", "layers_pattern", "exclude_modules")):
        return ""
    weighted = set(_ranks_in(weights))
    for name, shape in sorted(base.items()):
        module = name.removesuffix(".weight")
        if len(shape) == 2 and name.endswith(".weight") and module not in weighted and \
                any(module == target or module.endswith(f".{target}") for target in targets):
            return module
    return ""


def _rank(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise ValueError(f"{_CONFIG}: {what} is {shown(value)}, not a rank (a whole number from 1 "
                         f"to {MAX_RANK:,})")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, int) and abs(value) > 10 ** _MAX_DIGITS) or not math.isfinite(value):
        raise ValueError(f"{_CONFIG}: {what} is {shown(value)}, not a number (a finite one, at most "
                         f"{_MAX_DIGITS} digits)")
    return float(value)


def _patterns(value: Any, what: str) -> dict[str, Any]:
    """``rank_pattern``/``alpha_pattern``: module patterns (PEFT reads them as regular expressions) to values."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_PATTERNS:
        raise ValueError(f"{_CONFIG}: {what} is not a mapping of at most {_MAX_PATTERNS:,} module patterns")
    for key in value:
        if not isinstance(key, str) or len(key) > _MAX_PATTERN or _SLOW_PATTERN.search(key):
            raise ValueError(f"{_CONFIG}: {what} has the pattern {excerpt(repr(key), 60)}: give module names "
                             f"(at most {_MAX_PATTERN} characters; ., ^, $ and | allowed, no repetition or groups)")
        try:
            re.compile(key)
        except re.error as error:
            raise ValueError(f"{_CONFIG}: {what} has the pattern {excerpt(repr(key), 60)}: {error}") from None
    return value


def _pattern_key(patterns: dict[str, int], module: str) -> str:
    """The pattern PEFT applies to ``module`` (``peft.utils.other.get_pattern_key``): the first that matches its end."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return module


def _ranks_in(shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Module → the rank of its LoRA pair in the weights (lora_A: rank × in; lora_B: out × rank)."""
    ranks: dict[str, int] = {}
    for name, shape in shapes.items():
        module, _, part = name.removeprefix(_PREFIX).rpartition(".lora_")
        if len(shape) != 2 or not part.startswith(("A", "B")):
            continue
        module = module.removesuffix(".weight")
        rank = shape[0] if part.startswith("A") else shape[1]
        if ranks.setdefault(module, rank) != rank:
            raise ValueError(f"{_WEIGHTS}: the lora_A and lora_B of {module} have different ranks")
    return ranks


# -- estimates -------------------------------------------------------------------------------------

def _adapter_weights(spec: ModelSpec) -> tuple[int, str]:
    """The adapter's own bytes, from its file's header: a PEFT folder's safetensors, or a GGUF LoRA's tensors."""
    location = spec.adapter_location or ""
    if location.lower().endswith(".gguf") and Path(location).is_absolute():
        size = read_gguf(Path(location)).tensor_bytes
        return size, f"adapter: GGUF header ({format_bytes(size)})"
    folder = adapter_folder(spec)
    file = folder / _WEIGHTS if folder is not None else None
    if folder is not None and file is not None and not file.exists() and (folder / _BIN).exists():
        size = sum(nbytes for _, nbytes in _bin_tensors(folder / _BIN).values())
        return size, f"adapter: {_BIN} ({format_bytes(size)})"
    if file is None or not file.exists():
        return 0, f"adapter: unknown (no {_WEIGHTS} here)"
    size = tensor_bytes(read_safetensors_header(file))
    return size, f"adapter: safetensors header ({format_bytes(size)})"


def with_adapter(spec: ModelSpec, estimate: MemoryEstimate) -> MemoryEstimate:
    """The base's estimate plus the adapter's own weights (read before loading), for an adapter's spec."""
    if spec.adapter is None:
        return estimate
    try:
        size, method = _adapter_weights(spec)
    except (ValueError, KeyError, OSError) as error:
        raise ModelLoadingError(excerpt(f"cannot read the adapter of {spec.id!r}: {error}"),
                                model_id=spec.id) from None
    return replace(estimate, weights_bytes=estimate.weights_bytes + size, total_bytes=estimate.total_bytes + size,
                   weights_method=f"{estimate.weights_method} + {method}", adapter_bytes=size)


def adapter_slice(estimate: MemoryEstimate) -> MemoryEstimate:
    """What an adapter adds on a base that is loaded already: its own weights, nothing else."""
    size = estimate.adapter_bytes or 0
    method = estimate.weights_method.rpartition(" + ")[2]
    return replace(estimate, weights_bytes=size, kv_cache_bytes=0, overhead_bytes=0, total_bytes=size,
                   weights_method=method, kv_cache_method="its base's", overhead_method="its base's")
