"""The manager's public API in parts by job; :class:`~..facade.LLMManager` is all of them together.

``registry``: registering ids, aliases, tasks and pins, and the configuration
file; ``reports``: what the manager can tell without changing anything;
``settings``: every setting as a property, and ``configure()``;
``asynchronous``: the ``async`` forms of the calls. Loading, using and
unloading are the facade's own.
"""
