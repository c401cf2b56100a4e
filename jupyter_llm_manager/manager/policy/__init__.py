"""The pure policy: a snapshot in, a frozen plan out. No locks, threads, clocks, models or devices.

``fit``: who is evicted, who waits, who is refused; ``placement``: which device;
``decision``: the whole decision for one request, executed by admission and
simulated by ``plan()``; ``cycles``: requests of several kernels that would wait for each other.
"""
