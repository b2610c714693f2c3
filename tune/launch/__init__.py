"""Launching a sweep: config and data checks, the search space and preflights, the Ray session,
the Tune trainable, the live table, checkpoint retention and resume. Imports ``tune.run`` and
below, never ``tune.results`` or ``tune.ship``."""
