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
import warnings
from pathlib import Path
from typing import Any

from ...config.spec import ModelSpec
from ...errors import ConfigurationError, ModelLoadingError
from ...estimates import adapter_folder, check_adapter_files, checkpoint_shapes
from ...estimates.adapters import targeted_without_weights
from ...gguf.files import is_gguf
from ...support.heavy_imports import heavy
from ...support.quiet_hub import quiet_hub
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

    A local path (see :func:`~jupyter_llm_manager.config.spec.adapter_is_local`)
    must be a PEFT LoRA folder whose config agrees with its weights (ranks
    included) and whose tensors name modules of the base with matching sizes
    (read from both safetensors headers). A Hub id (``org/name``) not
    downloaded yet is checked when it loads; offline, it must be in the cache.
    """
    where: dict[str, Any] = {"model_id": spec.id, "key": "adapter"}
    folder = adapter_folder(spec)
    if folder is None:
        _not_here(spec.adapter_location or "", where)
        return
    config, mine = checked_files(folder, where)
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ConfigurationError(f"{str(folder)!r} holds a {excerpt(repr(config.get('peft_type')), 40)} adapter; "
                                 "only LoRA adapters can be registered", **where)
    base_folder = base.local_path or _cached(base)
    if mine is None or base_folder is None or not base_folder.is_dir() or is_gguf(base):
        return  # nothing to compare: the load checks it
    try:
        theirs = checkpoint_shapes(base_folder)
    except (ValueError, OSError) as error:
        raise ConfigurationError(excerpt(f"cannot read the base {base.id!r} to compare the adapter: {error}"),
                                 **where) from None
    problem = _mismatch(mine, theirs)
    unweighted = targeted_without_weights(config, mine, theirs)
    if unweighted and not problem:
        raise ConfigurationError(f"the adapter {str(folder)!r} targets {unweighted} of its base {base.id!r} but its "
                                 "weights hold no LoRA pair for it: PEFT would make matrices the weights do not "
                                 "fill; the config does not belong to these weights", **where)
    if problem:
        trained = excerpt(str(config.get("base_model_name_or_path") or "another model"), 120)
        raise ConfigurationError(f"the adapter {str(folder)!r} does not fit its base {base.id!r}: {problem}. Was it "
                                 f"trained on {trained}?", **where)


def _not_here(location: str, where: dict[str, Any]) -> None:
    """The adapter is not on this machine: a missing local path, or a Hub id offline and not in the cache."""
    path = Path(location)
    if path.is_absolute() and path.exists() and not path.is_dir():
        raise ConfigurationError(f"{location!r} is not a folder: a transformers base takes a PEFT adapter folder "
                                 "(a GGUF LoRA file runs on a llama_cpp base)", **where)
    if path.is_absolute():
        raise ConfigurationError(f"the adapter folder {location!r} does not exist; check the path (relative "
                                 "paths start from the kernel's working directory; only org/name is a Hub id)",
                                 **where)
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigurationError(f"the adapter {location!r} is a Hub id that is not in the local cache, and the Hub "
                                 "is off (HF_HUB_OFFLINE=1): download it first, or give a local folder", **where)


def checked_files(folder: Path, where: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[int, ...]] | None]:
    """The adapter's config and weight shapes, checked to agree (ranks included); a one-line error otherwise."""
    if not (folder / "adapter_config.json").exists():
        raise ConfigurationError(f"{str(folder)!r} has no adapter_config.json: it is not a PEFT adapter folder "
                                 "(save one with peft_model.save_pretrained)", **where)
    try:
        return check_adapter_files(folder)
    except PermissionError as error:
        raise ConfigurationError(f"cannot read {error.filename or str(folder)!r}: permission denied; give this "
                                 "user read access", **where) from None
    except (ValueError, OSError) as error:
        raise ConfigurationError(excerpt(f"cannot use the adapter in {str(folder)!r}: {error}"), **where) from None


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
    _check_again(spec, model)
    switch = base.extras.setdefault(_SWITCH, _Switch())
    switch.forget()  # a new adapter's layers start active, whatever the model answered as
    try:
        with warnings.catch_warnings(), quiet_hub():
            warnings.simplefilter("ignore")
            if wrapper is None:
                wrapper = peft.PeftModel.from_pretrained(model, spec.adapter_location, **options)
                base.extras[_PEFT] = wrapper
            else:
                wrapper.load_adapter(spec.adapter_location, **options)
    except Exception as error:
        if wrapper is not None and name in getattr(wrapper, "peft_config", {}):
            _delete(wrapper, name)
        raise ModelLoadingError(excerpt(f"could not load the adapter of {spec.id!r} from {spec.adapter!r}: "
                                        f"{_said(error)}"), model_id=spec.id) from error
    rank = getattr(wrapper.peft_config.get(name), "r", None)
    return LoadedModel(model=model, tokenizer=base.tokenizer, footprint=_footprint(model, name),
                       context_length=base.context_length, shared=True, adapter=name,
                       extras={_PEFT: wrapper, _SWITCH: switch},
                       details={**base.details, "adapter": spec.adapter, "base": spec.base, "rank": rank,
                                "shares": "its base's loaded model"})


def _check_again(spec: ModelSpec, model: Any) -> None:
    """The files may have changed since registration: their config must still agree with their weights, and
    reach no module of the loaded ``model`` they hold no weights for, before PEFT allocates a matrix by it
    (``"r": 1000000`` would take gigabytes)."""
    folder, location = adapter_folder(spec), spec.adapter_location or ""
    if folder is None and Path(location).is_absolute():
        raise ModelLoadingError(f"the adapter folder {location!r} of {spec.id!r} is gone", model_id=spec.id)
    if folder is None:
        _ask_the_hub(spec, location)
        return
    try:
        config, mine = checked_files(folder, {"model_id": spec.id, "key": "adapter"})
    except ConfigurationError as error:
        raise ModelLoadingError(str(error), model_id=spec.id) from None
    unweighted = targeted_without_weights(config, mine, _base_shapes(model)) if mine is not None else ""
    if unweighted:
        raise ModelLoadingError(f"the adapter {str(folder)!r} of {spec.id!r} targets {unweighted} but its weights "
                                "hold no LoRA pair for it (the files changed since registration?)", model_id=spec.id)


def _base_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """The shapes of the base's own weights in a loaded model, named as in its checkpoint (PEFT's layers put in
    place already moved them to ``NAME.base_layer.weight``)."""
    return {name.replace(".base_layer.", "."): tuple(tensor.shape) for name, tensor in model.named_parameters()
            if ".lora_" not in name}


def _ask_the_hub(spec: ModelSpec, repository: str) -> None:
    """One request before PEFT downloads a Hub adapter: an unknown id or an unreachable Hub is one line at once,
    not five silent retries (about 24 s) first."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return  # PEFT reads the cache alone, and says so at once
    try:
        with quiet_hub():
            HfApi().model_info(repository, token=spec.token.resolve() if spec.token else None, timeout=10)
    except Exception as error:  # noqa: BLE001 - network, auth, missing repository: all end the load here
        raise ModelLoadingError(excerpt(f"could not load the adapter of {spec.id!r} from {repository!r}: "
                                        f"{_said(error)}"), model_id=spec.id) from None


def _said(error: BaseException) -> str:
    """What went wrong, in a line: the Hub's errors said as what they mean, others on one line."""
    kind = type(error).__name__
    if kind == "RepositoryNotFoundError":
        return "the Hub has no such repository (or it is private: give token=...)"
    if kind in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or kind.endswith(("ConnectError", "Timeout",
                                                                                      "TimeoutException")):
        return "it is not in the local cache and the Hub cannot be reached (check the connection or HF_HUB_OFFLINE)"
    if kind == "GatedRepoError":
        return "the repository is gated: accept its terms on the Hub and give token=..."
    if kind == "HFValidationError":
        return "it is neither a local folder nor a valid Hub id (org/name)"
    return " ".join(str(error).split()) or kind


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
