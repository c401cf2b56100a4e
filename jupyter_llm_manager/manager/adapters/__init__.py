"""LoRA adapters as managed variants of one resident base model.

An adapter id is a model like any other (its own row, keep-alive, LRU place
and slice of the memory budget), registered with ``base=`` and ``adapter=``.
Where its backend shares the base (``transformers``: PEFT), its instance is a
slice that lives on the base's one loaded model: ``binding`` gives that
instance a backend bound to the loaded base; ``part`` derives its spec from
the base at registration, leases the base with it (so the base stays while
the adapter is used), and tells the policy what it is (``Ask.base``). Where
the backend applies adapters at load (``llama_cpp``), an adapter is an
instance of its own, the base with the adapter, counted as such.
"""

from .binding import AdapterOnBase
from .part import Adapters, adapter_ask

__all__ = ["AdapterOnBase", "Adapters", "adapter_ask"]
