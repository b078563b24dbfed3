"""Where tensors run: the Accelerate accelerator for a run's precision, and moving a batch onto its device.

Launched on several processes (torchrun / accelerate launch), the Accelerator opens the process group from the
launcher's environment: gloo on CPU, nccl on CUDA."""
from __future__ import annotations

import torch


def make_accelerator(precision: str, processes: int = 1):
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState

    # Accelerate keeps one process-wide state and refuses a second run in another precision; each tuneforge run
    # sets its own (the distributed PartialState is kept)
    AcceleratorState._reset_state(reset_partial_state=False)
    # DDP: a parameter that gets no gradient in a step (an unused pooler, a frozen branch) must not stall the
    # gradient all-reduce; finding them costs one graph walk per step
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if processes > 1 else None
    return Accelerator(mixed_precision={"fp32": "no"}.get(precision, precision), cpu=not torch.cuda.is_available(),
                       kwargs_handlers=handlers)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
