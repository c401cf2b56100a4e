"""LoRA adapters on a loaded transformers model, with PEFT: checked at registration, put on, switched, taken off.

Every adapter of a base lives on the base's one model object: PEFT injects
its layers in place, so the base is never copied or reloaded. One
``PeftModel`` per base model holds them (kept in the base's
``LoadedModel.extras``); before each request the manager's turn on the base
makes the model answer as that request's id (:func:`use_adapter`): its
adapter active, or all of them disabled for the base itself. PEFT switches by
walking every module (milliseconds on a large model), so the switch is made
only when the model answers as another id than the last request's.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from ...config.spec import ModelSpec
from ...errors import ConfigurationError, ModelLoadingError
from ...estimates import adapter_folder, checkpoint_shapes
from ...gguf.files import is_gguf
from ...support.heavy_imports import heavy
from ...support.units import excerpt
from ..base import LoadedModel

__all__ = ["adapter_name", "attach", "check", "detach", "use_adapter"]

_PREFIX = "base_model.model."  # where PEFT saves the wrapped model's tensors
_PEFT = "peft"  # the key of the base's PeftModel in LoadedModel.extras
_SWITCH = "peft switch"  # the key of the base's _Switch, shared by the base's and its adapters' LoadedModels


class _Switch:
    """What the shared model answers as since the last switch: an adapter's name, or ``None`` for the base.

    ``probe`` is one of the model's LoRA layers: its own state shows a switch
    made behind the manager's back (PEFT called on the model directly).
    """

    def __init__(self) -> None:
        self.known = False
        self.adapter: str | None = None
        self.probe: Any = None

    def forget(self) -> None:
        """Adapters were put on or taken off: the next request switches whatever the state."""
        self.known = False
        self.probe = None

    def holds(self, wrapper: Any, adapter: str | None) -> bool:
        """Whether the model answers as ``adapter`` already (``None``: the base, every adapter off)."""
        if not self.known or self.adapter != adapter:
            return False
        probe = self.probe
        if probe is None:
            return True
        if adapter is None:
            return bool(probe.disable_adapters)
        return not probe.disable_adapters and list(probe.active_adapters) == [adapter] and \
            _names(wrapper.base_model.active_adapter) == [adapter]

    def switched(self, wrapper: Any, adapter: str | None) -> None:
        self.known, self.adapter = True, adapter
        if self.probe is None:
            self.probe = _first_lora_layer(wrapper)


def adapter_name(spec: ModelSpec) -> str:
    """The adapter's name inside the model: unique per adapter instance, and a valid module name."""
    return "lora_" + hashlib.sha1(spec.instance_key.encode()).hexdigest()[:12]


# -- at registration: headers only ------------------------------------------------------------------

def check(spec: ModelSpec, base: ModelSpec) -> None:
    """A clear :class:`ConfigurationError` when ``spec``'s adapter cannot run on ``base``; nothing is loaded.

    A local folder must exist and hold a PEFT LoRA adapter; its tensors must
    name modules of the base with matching sizes (read from both safetensors
    headers). A Hub adapter not downloaded yet is checked when it loads.
    """
    folder = adapter_folder(spec)
    where: dict[str, Any] = {"model_id": spec.id, "key": "adapter"}
    location = spec.adapter_location or ""
    if folder is None:
        if Path(location).is_file():
            raise ConfigurationError(f"{location!r} is a file: a transformers base takes a PEFT adapter folder "
                                     "(a GGUF LoRA file runs on a llama_cpp base)", **where)
        if Path(location).is_absolute():
            raise ConfigurationError(f"the adapter folder {location!r} does not exist; check the path (relative "
                                     "paths start from the kernel's working directory)", **where)
        return
    config = _adapter_config(folder, where)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ConfigurationError(f"{str(folder)!r} holds a {config.get('peft_type')!r} adapter; only LoRA adapters "
                                 "can be registered", **where)
    weights = folder / "adapter_model.safetensors"
    base_folder = base.local_path or _cached(base)
    if not weights.exists() or base_folder is None or not base_folder.is_dir() or is_gguf(base):
        return  # nothing to compare: the load checks it
    try:
        mine, theirs = checkpoint_shapes(folder), checkpoint_shapes(base_folder)
    except (ValueError, KeyError, OSError) as error:
        raise ConfigurationError(f"cannot read the adapter or its base: {error}", **where) from None
    problem = _mismatch(mine, theirs)
    if problem:
        raise ConfigurationError(f"the adapter {str(folder)!r} does not fit its base {base.id!r}: {problem}. Was it "
                                 f"trained on {config.get('base_model_name_or_path') or 'another model'}?", **where)


def _adapter_config(folder: Path, where: dict[str, Any]) -> dict[str, Any]:
    path = folder / "adapter_config.json"
    if not path.exists():
        raise ConfigurationError(f"{str(folder)!r} has no adapter_config.json: it is not a PEFT adapter folder "
                                 "(save one with peft_model.save_pretrained)", **where)
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"cannot read {str(path)!r}: {excerpt(str(error))}", **where) from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{str(path)!r} is not a JSON object", **where)
    return config


def _cached(base: ModelSpec) -> Path | None:
    if not base.source:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(base.source, "config.json", revision=base.revision)
    return Path(found).parent if isinstance(found, str) else None


def _mismatch(adapter: dict[str, tuple[int, ...]], base: dict[str, tuple[int, ...]]) -> str:
    """Why the adapter's LoRA tensors do not fit the base's weights ('' when they do)."""
    for name, shape in sorted(adapter.items()):
        module, _, part = name.removeprefix(_PREFIX).rpartition(".lora_")
        if not part or len(shape) != 2:
            continue
        weight = base.get(f"{module}.weight")
        if weight is None:
            return f"the base has no module {module!r} (another architecture)"
        if len(weight) != 2:
            continue
        size = shape[1] if part.startswith("A") else shape[0]  # lora_A: (rank, in); lora_B: (out, rank)
        if size not in weight:
            side = "input" if part.startswith("A") else "output"
            return f"{module} has {side} size {size} in the adapter but shape {list(weight)} in the base (another size)"
    return ""


# -- on a loaded model ---------------------------------------------------------------------------------

def attach(base: LoadedModel, spec: ModelSpec) -> LoadedModel:
    """Put ``spec``'s adapter on the base's model (no copy): the adapter's own :class:`LoadedModel`."""
    peft = heavy("peft")
    model, name = base.model, adapter_name(spec)
    wrapper = base.extras.get(_PEFT)
    options = {"adapter_name": name, "is_trainable": False, "token": spec.token.resolve() if spec.token else None}
    switch = base.extras.setdefault(_SWITCH, _Switch())
    switch.forget()  # a new adapter's layers start active, whatever the model answered as
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if wrapper is None:
                wrapper = peft.PeftModel.from_pretrained(model, spec.adapter_location, **options)
                base.extras[_PEFT] = wrapper
            else:
                wrapper.load_adapter(spec.adapter_location, **options)
    except Exception as error:
        if wrapper is not None and name in getattr(wrapper, "peft_config", {}):
            _delete(wrapper, name)
        raise ModelLoadingError(f"could not load the adapter of {spec.id!r} from {spec.adapter!r}: {error}",
                                model_id=spec.id) from error
    rank = getattr(wrapper.peft_config.get(name), "r", None)
    return LoadedModel(model=model, tokenizer=base.tokenizer, footprint=_footprint(model, name),
                       context_length=base.context_length, shared=True, adapter=name,
                       extras={_PEFT: wrapper, _SWITCH: switch},
                       details={**base.details, "adapter": spec.adapter, "base": spec.base, "rank": rank,
                                "shares": "its base's loaded model"})


def _footprint(model: Any, name: str) -> dict[str, int]:
    """Bytes of the adapter's own parameters per device (its LoRA matrices)."""
    footprint: dict[str, int] = {}
    for parameter_name, tensor in model.named_parameters():
        if f".{name}." in parameter_name:
            device = "cpu" if tensor.device.type in ("cpu", "mps") else str(tensor.device)
            footprint[device] = footprint.get(device, 0) + tensor.nbytes
    return footprint


def detach(loaded: LoadedModel) -> None:
    """Take the adapter off the shared model; the base and the other adapters stay."""
    wrapper = loaded.extras.pop(_PEFT, None)
    switch = loaded.extras.pop(_SWITCH, None)
    if switch is not None:
        switch.forget()
    if wrapper is not None and loaded.adapter is not None and loaded.adapter in getattr(wrapper, "peft_config", {}):
        _delete(wrapper, loaded.adapter)
    loaded.model = None
    loaded.tokenizer = None


def _delete(wrapper: Any, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the active adapter was deleted": the next request sets its own
        wrapper.delete_adapter(name)


def use_adapter(loaded: LoadedModel) -> None:
    """The shared model answers as ``loaded``: its adapter alone active, or every adapter off for the base.

    Switches only when the model answered as another id before (a lease or a
    request on the id it answers as already costs nothing).
    """
    wrapper = loaded.extras.get(_PEFT)
    if wrapper is None:
        return
    switch = loaded.extras.get(_SWITCH)
    if switch is not None and switch.holds(wrapper, loaded.adapter):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loaded.adapter is None:
            wrapper.base_model.disable_adapter_layers()
        else:
            wrapper.base_model.enable_adapter_layers()
            wrapper.set_adapter(loaded.adapter)
    if switch is not None:
        switch.switched(wrapper, loaded.adapter)


def _names(active: Any) -> list[str]:
    return [active] if isinstance(active, str) else list(active or ())


def _first_lora_layer(wrapper: Any) -> Any:
    """One LoRA layer of the model (``None`` when PEFT's layer class is not found)."""
    layer_class = getattr(heavy("peft").tuners.tuners_utils, "BaseTunerLayer", None)
    if layer_class is None:
        return None
    return next((module for module in wrapper.base_model.model.modules() if isinstance(module, layer_class)), None)
