"""The backend protocol: how a kind of model is loaded, run and let go.

A backend is stateless about models: :meth:`Backend.load` returns a
:class:`LoadedModel` that only the manager keeps, and every other method takes
it back. Policy (when to load, what to evict) lives in the manager.

A third-party backend subclasses :class:`Backend` and is registered under the
entry-point group ``jupyter_llm_manager.backends``.
"""

from __future__ import annotations

import difflib
import threading
import traceback
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Literal

from ..config.spec import ModelSpec
from ..errors import InvalidGenerationParameters
from ..estimates import remote_estimate
from ..generation import GenerationParams, GenerationResult, Prompt
from ..reports import MemoryEstimate
from .generation_defaults import NO_DEFAULTS, GenerationDefaults

__all__ = ["Backend", "ContextGrowth", "LoadedModel", "Placement", "TextGenerator", "check_extra_params",
           "progress_reporter", "release_frames", "report_progress"]

#: What :meth:`Backend.stream` returns: yields text pieces, returns the result.
TextGenerator = Generator[str, None, GenerationResult]


def release_frames(error: BaseException | None) -> None:
    """Drop the local variables of the frames an exception chain keeps alive.

    A load or a generation that fails holds its half-built tensors in the
    locals of the failed frames; the traceback (kept by IPython as the last
    error) would keep that memory. File and line information stays.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


_reporters = threading.local()


@contextmanager
def progress_reporter(callback: Callable[[str], None]) -> Iterator[None]:
    """Send what :func:`report_progress` says in this thread to ``callback`` (the manager, during a load)."""
    previous = getattr(_reporters, "callback", None)
    _reporters.callback = callback
    try:
        yield
    finally:
        _reporters.callback = previous


def report_progress(message: str) -> None:
    """Tell whoever waits for the load running in this thread what it is doing now.

    For the long steps of a load (converting a file, reading a tokenizer):
    the ``%%llm`` status line and the dashboard show the message. Outside a
    managed load it does nothing.
    """
    callback = getattr(_reporters, "callback", None)
    if callback is not None:
        callback(message)


@dataclass(frozen=True)
class Placement:
    """Where the manager decided a model goes.

    ``devices`` are memory pools the manager accounts for (``cpu``,
    ``cuda:0``); ``max_memory`` is the room per device for a multi-device
    placement.
    """

    devices: tuple[str, ...]
    max_memory: dict[str, int] | None = None
    target: str | None = None  # device string to load on when it differs from the pool ("mps")
    context: int | None = None  # tokens of context chosen for the model (``max_context: auto``)


@dataclass(frozen=True)
class ContextGrowth:
    """The contexts a model may run with (``floor`` to ``top`` in ``step`` tokens), and its estimate at each.

    ``estimate_at`` is pure arithmetic over metadata read beforehand, so the
    policy calls it while it decides.
    """

    floor: int
    step: int
    top: int
    estimate_at: Callable[[int], MemoryEstimate]

    def capped(self, limit: int | None) -> ContextGrowth:
        """The same growth, to at most ``limit`` tokens (``max_context_auto_limit``; ``None``: no ceiling)."""
        return self if limit is None or limit >= self.top else replace(self, top=max(limit, self.floor))

    def fit(self, at_floor: MemoryEstimate, spare: int) -> tuple[int, MemoryEstimate]:
        """The largest context whose memory beyond ``at_floor`` fits in ``spare`` bytes, and its estimate."""
        best, chosen = self.floor, at_floor
        low, high = 1, (max(self.top, self.floor) - self.floor) // self.step  # growth is monotonic: bisect
        while low <= high:
            middle = (low + high) // 2
            estimate = self.estimate_at(self.floor + middle * self.step)
            if estimate.total_bytes - at_floor.total_bytes <= spare:
                best, chosen, low = self.floor + middle * self.step, estimate, middle + 1
            else:
                high = middle - 1
        return best, chosen


@dataclass(eq=False)
class LoadedModel:
    """A loaded model as the backend hands it to the manager (the only holder).

    ``footprint`` is the measured bytes per device; ``details`` are facts to
    show in status (endpoint, latency); ``generation`` is what a call gets
    where neither it nor the spec sets a value (the model files' settings,
    the default repetition penalty).
    """

    model: Any
    tokenizer: Any = None
    footprint: dict[str, int] = field(default_factory=dict)
    context_length: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    how: str = ""  # how it was loaded, when worth saying ("from its converted copy")
    complete_footprint: bool = False  # the footprint counts the KV cache and working buffers too
    measured_bytes: int | None = None  # what was measured, where the footprint is a declared size
    generation: GenerationDefaults = NO_DEFAULTS
    shared: bool = False  # ``model`` belongs to another instance (a LoRA adapter's base): freeing this keeps it
    adapter: str | None = None  # the name of the LoRA adapter this is, on the shared model
    extras: dict[str, Any] = field(default_factory=dict)  # the backend's own objects for it; never shown


class Backend:
    """Base class of backends; subclasses implement load, stream and maybe generate."""

    name: ClassVar[str] = ""
    #: A remote backend holds no local memory: never evicted for budget, not counted by the cap.
    remote: ClassVar[bool] = False
    #: What its models can be used for: ``chat`` (generate, stream) and ``embed`` (vectors).
    modes: ClassVar[frozenset[str]] = frozenset({"chat"})
    #: One request at a time per loaded model (its objects are not thread-safe): the manager queues the others.
    serial: ClassVar[bool] = False
    context_at_load: ClassVar[bool] = False  # the context is allocated at load: a copy answers only prompts that fit
    #: Its ``unload`` frees the model's memory even while something still references the object (llama.cpp's
    #: ``close()``): an object kept alive by the user then holds nothing, and nothing stays counted for it.
    frees_on_unload: ClassVar[bool] = False
    #: How it runs LoRA adapters: ``shared`` (put on the loaded base, several per base), ``own`` (each adapter
    #: is an instance of its own: the base with the adapter applied at load), or ``None`` (it runs none).
    adapters: ClassVar[Literal["shared", "own"] | None] = None

    def problem(self, spec: ModelSpec) -> str | None:
        """Why ``spec`` cannot load here, known without trying (a missing package); ``None`` when it may."""
        return None

    def normalize(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` as this backend takes it: options it owns in ``load_kwargs`` moved into the spec's fields.

        Called when a model is registered, before :meth:`validate`, so that
        estimates and plans see what will really be loaded.
        """
        return spec

    def validate(self, spec: ModelSpec) -> None:
        """Raise :class:`~jupyter_llm_manager.errors.ConfigurationError` for options this backend rejects."""

    def extra_params(self, spec: ModelSpec) -> frozenset[str] | None:
        """Generation keywords ``spec`` accepts beyond :class:`GenerationParams`' own (``-p KEY=VALUE``).

        ``None``: any (a server decides). Known without loading the model, so
        that a misspelt parameter is refused before anything loads.
        """
        return None

    def device_kinds(self) -> set[str]:
        """Device kinds this backend can place a model on here (``cpu``, ``cuda``, ``mps``)."""
        return {"cpu"}

    def check_adapter(self, spec: ModelSpec, base: ModelSpec) -> None:
        """Raise :class:`~jupyter_llm_manager.errors.ConfigurationError` when ``spec``'s adapter cannot run on
        ``base`` (missing, not an adapter, another architecture or size); reads headers only."""

    def attach_adapter(self, base: LoadedModel, spec: ModelSpec) -> LoadedModel:
        """Put ``spec``'s adapter on the loaded ``base`` (``adapters = "shared"``); its own :class:`LoadedModel`."""
        raise NotImplementedError

    def detach_adapter(self, loaded: LoadedModel) -> None:
        """Take an attached adapter off its base again; the base keeps answering."""
        raise NotImplementedError

    def use_adapter(self, loaded: LoadedModel) -> None:
        """Make the shared model answer as ``loaded`` (its adapter active, or none for the base itself)."""

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        """Memory the model will need, from metadata only."""
        return remote_estimate(spec.id)

    def generation_defaults(self, spec: ModelSpec) -> GenerationDefaults:
        """What a call gets where neither it nor the spec sets a value, read from local files only.

        :data:`NO_DEFAULTS` unless the backend samples itself: the local
        backends add the model files' recommended settings and the default
        repetition penalty (:mod:`.generation_defaults`).
        """
        return NO_DEFAULTS

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        raise NotImplementedError

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        """Yield text pieces as they are made; return the final result.

        Setting ``stop`` ends generation within one token; the result then has
        ``finish_reason="interrupted"``.
        """
        raise NotImplementedError

    def generate(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
                 model_id: str, raw: bool) -> GenerationResult:
        """The whole answer at once; by default, the stream consumed."""
        pieces = self.stream(loaded, prompt, params, model_id=model_id, raw=raw, stop=threading.Event())
        while True:
            try:
                next(pieces)
            except StopIteration as done:
                return done.value

    def embed(self, loaded: LoadedModel, texts: Sequence[str], *, model_id: str) -> list[list[float]]:
        """One vector per text (models registered with ``mode: embed``)."""
        raise NotImplementedError

    def lent_context(self, spec: ModelSpec) -> int:
        """The tokens of context another process's copy needs to answer for ``spec`` (0: any copy will do, as for
        backends that allocate no context at load)."""
        return 0

    def context_growth(self, spec: ModelSpec) -> ContextGrowth | None:
        """For ``max_context: auto``: the contexts the model may run with and its estimate at each.

        Read from metadata with no lock held; the admission policy then picks
        the largest context that fits without reading anything. ``None``:
        the backend has no such choice.
        """
        return None

    def unload(self, loaded: LoadedModel) -> None:
        """Drop every reference the backend keeps to the model (close clients)."""
        loaded.model = None
        loaded.tokenizer = None
        loaded.extras.clear()

    def memory_in_use(self, devices: tuple[str, ...]) -> dict[str, int]:
        """Bytes allocated now on the devices this backend can measure (for freed-bytes reports)."""
        return {}

    def release_memory(self, devices: tuple[str, ...]) -> None:
        """Return cached memory to the device after the model was collected."""


#: The parameters every backend takes (the fields of :class:`GenerationParams`).
COMMON_PARAMS = tuple(f.name for f in fields(GenerationParams) if f.name != "extra")


def check_extra_params(params: GenerationParams, accepted: frozenset[str] | None, model_id: str, backend: str) -> None:
    """Refuse, in one line, the extra parameters ``model_id``'s backend does not accept.

    The message names them, their close matches and the valid names, so a
    typo (``top_kk``) is fixed without a trip to the documentation.
    """
    if accepted is None:
        return
    unknown = sorted(key for key in params.extra if key not in accepted)
    if not unknown:
        return
    others = sorted(accepted - set(COMMON_PARAMS), key=lambda name: (len(name), name))  # the short, common ones first
    close = difflib.get_close_matches(unknown[0], [*COMMON_PARAMS, *others], n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    names = ", ".join(repr(key) for key in unknown)
    raise InvalidGenerationParameters(
        f"unknown generation parameter{'s' if len(unknown) > 1 else ''} {names} for {model_id!r}: {hint}"
        f"valid: {', '.join(COMMON_PARAMS)}; {backend} also takes {_listed(others, _LISTED_CHARS)}",
        model_id=model_id)


_LISTED_CHARS = 220  # the message stays one readable line (errors are cut at 500 characters)


def _listed(names: list[str], limit: int) -> str:
    """``names`` joined, as many as fit in ``limit`` characters, then how many more there are."""
    shown: list[str] = []
    for name in names:
        if sum(len(n) + 2 for n in shown) + len(name) > limit:
            return f"{', '.join(shown)} and {len(names) - len(shown)} more"
        shown.append(name)
    return ", ".join(shown) or "nothing else"
