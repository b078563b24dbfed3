"""Where tensors run: the Accelerate accelerator for a run's precision, and moving a batch onto its device."""
from __future__ import annotations

import torch


def make_accelerator(precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps one process-wide state and refuses a second run in another precision; each tuneforge run
    # sets its own (the distributed PartialState is kept)
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available())


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
