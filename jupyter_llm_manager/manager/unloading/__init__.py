"""Taking models out and giving their memory back.

``evictions``: every way an instance is taken out (restored limits, keep-alive,
out-of-memory retries, other kernels' requests, unloads by hand), decided on a
snapshot and executed; ``freeing``: letting go of memory for real and saying
what still holds it; ``limits``: the limits kept as the state changes;
``keep_alive``: the reaper thread.
"""
