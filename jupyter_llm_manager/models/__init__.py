"""Models that come with the package: the built-in ``smollm2``, demo checkpoints, tiny test models, speech demos."""
