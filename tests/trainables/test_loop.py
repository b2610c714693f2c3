"""The training loop's device choices: autocast in bf16 only where the card computes it natively."""

from __future__ import annotations

import torch


def test_training_autocast_is_bf16_only_where_native(monkeypatch):
    """No GPU here: torch's capability query is replaced by the answers a GPU would give."""
    from trainables.loop import _amp_dtype

    cuda = torch.device("cuda")
    asked = []

    def native_only(including_emulation=True):
        asked.append(including_emulation)
        return including_emulation  # an emulating GPU (before Ampere): bf16 only when emulation counts

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", native_only)
    assert _amp_dtype(cuda, True) is torch.float16 and asked == [False]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert _amp_dtype(cuda, True) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a torch without the argument
    assert _amp_dtype(cuda, True) is torch.float16
    assert _amp_dtype(torch.device("cpu"), True) is None and _amp_dtype(cuda, False) is None
