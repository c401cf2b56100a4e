"""Admission: how a request gets a lease on a model, loading it first when needed.

``requests``: every load, use, generate and stream gets its lease here (join a
load in flight, queue, plan, wait, refuse); ``queue``: the fair wait queue;
``loading``: running an admitted load (one retry after out-of-memory); ``across``: what a
waiting request tells other kernels, and a wait for each other refused;
``warmup``: the ``preload`` models loaded in the background at start.
"""
