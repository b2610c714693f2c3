"""A sweep's results: the report, plots, TensorBoard, the test-split evaluation, the best trial's
train config, and the end of a sweep. Imports ``tune.run`` and below, never ``tune.launch`` or
``tune.ship``."""
