"""LoRA adapters as managed variants of one resident base model.

An adapter id is a model like any other (its own row, keep-alive, LRU place
and slice of the memory budget), registered with ``base=`` and ``adapter=``.
Where its backend shares the base (``transformers``: PEFT; :func:`~.specs.shares_base`),
admission leases the base first and places the adapter as a slice of the
base's one loaded model (``binding``: its backend bound to that instance,
taking turns with the base); ``specs`` derives its spec from the base at
registration and gives the policy its view (:func:`~.specs.adapter_ask`).
Where the backend applies adapters at load (``llama_cpp``), an adapter is an
instance of its own, the base with the adapter, counted as such.
"""

from .binding import AdapterOnBase
from .specs import AdapterSpecs, adapter_ask, shares_base

__all__ = ["AdapterOnBase", "AdapterSpecs", "adapter_ask", "shares_base"]
