"""The ``transformers`` backend: a tokenizer and a causal LM in this kernel.

torch and transformers are imported when a model is first estimated or
loaded, not when this package is imported. This module loads, measures and
frees; answering (generate, stream, embed) is :mod:`.answering`'s.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from ...config.spec import ModelSpec
from ...devices import release_device_memory
from ...errors import (
    ConfigurationError,
    ModelLoadingError,
    OutOfMemoryDuringLoad,
)
from ...estimates import estimate_checkpoint
from ...gguf.files import gguf_path, is_gguf, read_gguf
from ...reports import MemoryEstimate
from ...support.cpus import SAMPLER
from ..base import Backend, LoadedModel, Placement, release_frames
from ..generation_defaults import LOCAL_DEFAULTS, GenerationDefaults, checkpoint_defaults, gguf_defaults
from . import adapters as peft_adapters
from .answering import Answering
from .gguf import gguf_dtype, load_gguf
from .support import (
    context_length,
    device_kinds,
    generate_keywords,
    import_torch,
    import_transformers,
    input_device,
    library_progress_off,
    resolved,
    torch_dtype,
)

__all__ = ["TransformersBackend"]

log = logging.getLogger(__name__)

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
_JOIN_TIMEOUT_S = 30.0
_SAMPLER_HOLD = "cpu sampler"  # the extras key of a CPU model's hold on the CPU sampler (torch's thread choice)


class TransformersBackend(Answering, Backend):
    """Loads Hugging Face causal language models with ``transformers``."""

    name = "transformers"
    modes = frozenset({"chat", "embed"})
    adapters = "shared"  # PEFT LoRA adapters live on the base's one loaded model (see .adapters)
    check_adapter = staticmethod(peft_adapters.check)
    attach_adapter = staticmethod(peft_adapters.attach)
    detach_adapter = staticmethod(peft_adapters.detach)
    use_adapter = staticmethod(peft_adapters.use_adapter)

    def normalize(self, spec: ModelSpec) -> ModelSpec:
        """Loading options that are spec fields move there; the placement's are refused (see :func:`owned_options`)."""
        return owned_options(spec)

    def extra_params(self, spec: ModelSpec) -> frozenset[str] | None:
        return generate_keywords()

    def device_kinds(self) -> set[str]:
        return set(device_kinds())

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        return estimate_checkpoint(spec)

    def generation_defaults(self, spec: ModelSpec) -> GenerationDefaults:
        """A GGUF file's sampling metadata or a checkpoint's generation_config.json, then the default penalty."""
        if is_gguf(spec):
            path = gguf_path(spec)
            return gguf_defaults(read_gguf(path)) if path is not None else LOCAL_DEFAULTS
        return checkpoint_defaults(spec)

    # -- loading ---------------------------------------------------------------

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        """Load tokenizer and model onto ``placement``; measure what they took."""
        torch = import_torch()
        self._check_environment(spec, placement)
        source = str(spec.local_path) if spec.local_path else spec.source or ""
        if spec.local_path:
            _check_local_source(spec)
        if spec.trust_remote_code:
            log.warning("model %r runs code from its repository (trust_remote_code=True)", spec.id)
        before = self.memory_in_use(placement.devices)
        try:
            with library_progress_off(gguf=is_gguf(spec)):
                model, tokenizer, how = self._from_pretrained(spec, placement, source)
        except (torch.OutOfMemoryError, MemoryError) as error:
            release_frames(error)
            raise OutOfMemoryDuringLoad(f"out of memory while loading {spec.id!r} on "
                                        f"{', '.join(placement.devices)}: {error}".strip(),
                                        model_id=spec.id, devices=placement.devices) from None
        except ModelLoadingError:
            raise
        except Exception as error:
            release_frames(error)
            raise ModelLoadingError(f"could not load {spec.id!r} from {source!r}: {error}",
                                    model_id=spec.id) from error
        if model.training:  # from_pretrained returns eval mode; eval() walks every module (0.25 ms here)
            model.eval()
        footprint = self._footprint(model, placement.devices, before)
        context = spec.max_context if isinstance(spec.max_context, int) else context_length(model)
        on_cpu = input_device(model).type == "cpu"  # torch's threads are chosen per generation: keep the CPUs read
        return LoadedModel(model=model, tokenizer=tokenizer, footprint=footprint, context_length=context,
                           details={"dtype": str(model.dtype).removeprefix("torch.")}, how=how,
                           generation=self.generation_defaults(spec),
                           extras={_SAMPLER_HOLD: SAMPLER.hold()} if on_cpu else {})

    def unload(self, loaded: LoadedModel) -> None:
        hold = loaded.extras.get(_SAMPLER_HOLD)
        if hold is not None:
            hold.release()
        super().unload(loaded)

    def _from_pretrained(self, spec: ModelSpec, placement: Placement, source: str) -> tuple[Any, Any, str]:
        """The model (a causal LM, or the base model in embed mode), its tokenizer, and how they were loaded."""
        transformers = import_transformers()
        model_class = transformers.AutoModel if spec.mode == "embed" else transformers.AutoModelForCausalLM
        common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code,
                  "token": spec.token.resolve() if spec.token else None}
        if is_gguf(spec):
            common["revision"] = None  # the file is on disk by now: a revision would send it to the Hub
            dtype = torch_dtype(gguf_dtype(spec))
            loaded = load_gguf(
                spec, lambda where, **more: model_class.from_pretrained(
                    where, dtype=dtype, **self._placement_kwargs(spec, placement), **common,
                    **resolved(spec.load_kwargs), **more),
                lambda where, **more: transformers.AutoTokenizer.from_pretrained(where, **common, **more))
            return loaded.model, loaded.tokenizer, loaded.how
        tokenizer = transformers.AutoTokenizer.from_pretrained(spec.tokenizer or source, **common)
        model = model_class.from_pretrained(source, dtype=torch_dtype(spec.dtype),
                                            **self._placement_kwargs(spec, placement), **common,
                                            **resolved(spec.load_kwargs))
        return model, tokenizer, ""

    def _check_environment(self, spec: ModelSpec, placement: Placement) -> None:
        torch = import_torch()
        wants_cuda = any(d.startswith("cuda") for d in placement.devices)
        if wants_cuda and not torch.cuda.is_available():
            raise ModelLoadingError(f"{spec.id!r} is placed on {', '.join(placement.devices)} but torch sees no "
                                    "CUDA GPU (CPU-only build or no driver); use device='cpu' or 'auto'",
                                    model_id=spec.id)
        if spec.quantization:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ModelLoadingError(f"{spec.id!r} asks for {spec.quantization} quantization, which needs "
                                        "bitsandbytes: pip install bitsandbytes", model_id=spec.id)
            if not wants_cuda:
                raise ModelLoadingError(f"{spec.id!r} asks for {spec.quantization} quantization, which needs a "
                                        "CUDA GPU; remove quantization to load it on the CPU", model_id=spec.id)

    def _placement_kwargs(self, spec: ModelSpec, placement: Placement) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        target = placement.target or placement.devices[0]
        if len(placement.devices) > 1:
            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = {int(d.split(":")[1]): size for d, size in (placement.max_memory or {}).items()}
        elif target != "cpu":
            kwargs["device_map"] = {"": target}
        if spec.quantization:
            BitsAndBytesConfig = import_transformers().BitsAndBytesConfig
            compute = torch_dtype(spec.dtype)
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=import_torch().bfloat16 if compute == "auto" else compute)
                if spec.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        return kwargs

    def _footprint(self, model: Any, devices: tuple[str, ...], before: dict[str, int]) -> dict[str, int]:
        """CUDA allocated delta per GPU; parameter and buffer bytes elsewhere (tied weights once)."""
        by_device: dict[Any, int] = {}
        seen: set[int] = set()
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            by_device[tensor.device] = by_device.get(tensor.device, 0) + tensor.nbytes
        footprint: dict[str, int] = {}
        for device, size in by_device.items():
            name = "cpu" if device.type in ("cpu", "mps") else str(device)
            footprint[name] = footprint.get(name, 0) + size
        after = self.memory_in_use(devices)
        for device in after:
            footprint[device] = max(after[device] - before.get(device, 0), 0) or footprint.get(device, 0)
        return footprint

    # -- memory ------------------------------------------------------------------

    def memory_in_use(self, devices: tuple[str, ...]) -> dict[str, int]:
        torch = import_torch()
        if not torch.cuda.is_initialized():
            return {}
        return {d: int(torch.cuda.memory_allocated(torch.device(d))) for d in devices if d.startswith("cuda")}

    def release_memory(self, devices: tuple[str, ...]) -> None:
        """``synchronize`` + ``empty_cache`` on each CUDA device; trim the C heap for CPU RAM."""
        release_device_memory(import_torch(), devices)

    # -- embeddings ----------------------------------------------------------------


def _check_local_source(spec: ModelSpec) -> None:
    """A local source is a checkpoint folder, a ``.gguf`` file, or a folder holding ``gguf_file``."""
    folder = spec.local_path
    assert folder is not None
    if not folder.exists():
        raise ModelLoadingError(f"the source {str(folder)!r} of {spec.id!r} does not exist", model_id=spec.id)
    if is_gguf(spec):
        return  # its header is read (and checked) when it loads
    if not folder.is_dir():
        raise ModelLoadingError(f"{str(folder)!r} is a file but not a .gguf file: give a checkpoint folder, or "
                                "a .gguf file", model_id=spec.id)
    if not (folder / "config.json").exists():
        raise ModelLoadingError(f"{str(folder)!r} has no config.json: it is not a transformers checkpoint "
                                f"folder (save one with model.save_pretrained)", model_id=spec.id)
    if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise ModelLoadingError(f"{str(folder)!r} has no weight files (*.safetensors, *.bin): the "
                                "checkpoint is incomplete", model_id=spec.id)


#: ``load_kwargs`` keys that are spec fields: taken into the spec, so estimates and instance keys see them.
_FIELDS = {"torch_dtype": "dtype", "dtype": "dtype", "revision": "revision", "trust_remote_code": "trust_remote_code",
           "gguf_file": "gguf_file"}
#: ``load_kwargs`` keys the manager decides: placement and quantization would escape the budget.
_PLACEMENT = ("device_map", "max_memory", "quantization_config", "offload_folder")


def owned_options(spec: ModelSpec) -> ModelSpec:
    """``spec`` with its field-like ``load_kwargs`` moved into fields; a :class:`ConfigurationError` for the rest."""
    options = dict(spec.load_kwargs)
    for key in _PLACEMENT:
        if key in options:
            raise ConfigurationError(f"load_kwargs.{key}: the manager places the model and counts its memory: "
                                     "write device (cpu, cuda, cuda:N, balanced) and quantization (4bit, 8bit)",
                                     model_id=spec.id, key=f"load_kwargs.{key}")
    changes: dict[str, object] = {}
    for key in ("load_in_4bit", "load_in_8bit"):
        if options.pop(key, False):
            changes["quantization"] = key[len("load_in_"):]
    for key, field_name in _FIELDS.items():
        if key in options:
            value = options.pop(key)
            current = changes.get(field_name, getattr(spec, field_name))
            default = {"dtype": "auto", "trust_remote_code": False}.get(field_name)
            if current not in (None, default, value):
                raise ConfigurationError(f"load_kwargs.{key} says {value!r} but {field_name} says {current!r}: keep "
                                         f"{field_name} only", model_id=spec.id, key=f"load_kwargs.{key}")
            changes[field_name] = value
    return spec.with_changes(**changes, load_kwargs=options) if changes else spec
