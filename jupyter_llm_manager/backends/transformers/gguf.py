"""GGUF files through transformers: dequantize once, then load the converted copy.

transformers reads a GGUF file (with the ``gguf`` package) by dequantizing
every tensor: about 11 s for SmolLM2-135M on two cores, plus 3 s to build
its tokenizer. The first load saves what it built as a converted copy
(:class:`~.converted.ConvertedCopies`); the next load of the
same file, in the same dtype and mode, reads that copy in a fraction of a
second. A copy that cannot be read, or that changed since it was written
(its checksums differ), is discarded and rebuilt, with a warning saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config.spec import ModelSpec
from ...errors import ModelLoadingError
from ...gguf.files import gguf_path, read_gguf
from ...support.units import excerpt
from ..base import report_progress
from .converted import ConvertedCopies
from .support import import_transformers

__all__ = ["GgufLoad", "gguf_dtype", "load_gguf"]

log = logging.getLogger(__name__)

#: ``from_pretrained`` of a model class and of a tokenizer: ``(source, **options) -> object``.
Loader = Callable[..., Any]


@dataclass
class GgufLoad:
    """What :func:`load_gguf` built, and how (for the load event)."""

    model: Any
    tokenizer: Any
    how: str


def gguf_dtype(spec: ModelSpec) -> str:
    """The dtype a GGUF model runs in: the spec's, else float32 (what dequantization gives)."""
    return spec.dtype if spec.dtype in ("float32", "float16", "bfloat16") else "float32"


def load_gguf(spec: ModelSpec, load_model: Loader, load_tokenizer: Loader,
              copies: ConvertedCopies | None = None) -> GgufLoad:
    """Load ``spec``'s GGUF file: from its converted copy when there is an intact one, else convert it.

    ``load_model(source, **options)`` and ``load_tokenizer(source, **options)``
    are the backend's ``from_pretrained`` calls with the placement and dtype
    already bound.
    """
    copies = copies or ConvertedCopies()
    path = _local_file(spec)
    info = read_gguf(path)
    dtype = gguf_dtype(spec)
    folder = copies.folder_for(info.identity, f"{dtype}|{spec.mode}", import_transformers().__version__)
    damaged = why = ""
    problem = copies.problem(folder) if folder.exists() else "there is none yet"
    if problem is None:
        try:
            report_progress(f"loading the converted copy of {path.name}")
            loaded = GgufLoad(load_model(str(folder)), load_tokenizer(spec.tokenizer or str(folder)),
                              f"from its converted copy of {path.name}")
        except Exception as error:
            if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
                raise  # the copy is fine: the device is full
            why = excerpt(f"{type(error).__name__}: {error}")
            log.info("the converted copy of %s could not be loaded (%s)", path.name, why)
            damaged = "its converted copy could not be loaded"
            copies.discard(folder)
        else:
            copies.touch(folder)
            return loaded
    elif folder.exists():
        log.warning("the converted copy of %s is incomplete or damaged (%s): converting the GGUF file again",
                    path.name, problem)
        damaged, why = "its converted copy was incomplete or damaged", problem
        copies.discard(folder)
    report_progress(f"{damaged} ({why}): converting {path.name} again" if damaged
                    else f"converting {path.name} from GGUF to {dtype} (first load only)")
    model = load_model(str(path.parent), gguf_file=path.name)
    report_progress(f"reading the tokenizer of {path.name}")
    tokenizer = load_tokenizer(spec.tokenizer or str(path.parent), **({} if spec.tokenizer else {"gguf_file": path.name}))
    report_progress(f"keeping a converted copy of {path.name} for the next load")
    kept = _keep_copy(copies, folder, path, dtype, model, tokenizer)
    how = "converted from GGUF" + (f" ({damaged}: rebuilt)" if damaged else "")
    return GgufLoad(model, tokenizer, how + (", a copy kept for the next load" if kept else ""))


def _local_file(spec: ModelSpec) -> Path:
    """The GGUF file on disk, downloaded from the Hub first when the source is a repo."""
    path = gguf_path(spec)
    if path is None and spec.source and spec.gguf_file and spec.local_path is None:
        from huggingface_hub import hf_hub_download

        report_progress(f"downloading {spec.gguf_file} from {spec.source}")
        try:
            path = Path(hf_hub_download(spec.source, spec.gguf_file, revision=spec.revision,
                                        token=spec.token.resolve() if spec.token else None))
        except Exception as error:
            raise ModelLoadingError(f"could not download {spec.gguf_file!r} from {spec.source!r}: {error}",
                                    model_id=spec.id) from error
    if path is None or not path.is_file():
        where = str(path) if path else spec.source
        raise ModelLoadingError(f"the GGUF file of {spec.id!r} is not there ({where!r}); check source and "
                                "gguf_file", model_id=spec.id)
    return path


def _keep_copy(copies: ConvertedCopies, folder: Path, path: Path, dtype: str, model: Any, tokenizer: Any) -> bool:
    """Save the converted model and tokenizer; a failure (disk full) only costs the next load its speed.

    ``save_pretrained`` refuses a model that still says it is GGUF-quantized,
    so the quantization metadata is dropped first: the weights are already
    dequantized in memory.
    """
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(target: Path) -> None:
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)

    try:
        copies.store(folder, str(path), dtype, write)
    except Exception as error:  # noqa: BLE001 - the model is loaded either way
        log.warning("could not keep a converted copy of %s under %s: %s", path.name, copies.root, error)
        return False
    return True
