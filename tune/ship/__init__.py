"""Shipping the chosen model: export (``.pt``, TorchScript, ONNX) and predict. Imports ``tune.run``
and below, never ``tune.launch`` or ``tune.results``."""
