"""One run on N processes (`torchrun` / `accelerate launch`): what changes, in one place.

tuneforge launches nothing and owns no process group or collective algorithm. The launcher starts the processes
and sets RANK / WORLD_SIZE / LOCAL_RANK; Accelerate's Accelerator (engine/device.py) opens the process group (gloo
on CPU, nccl on CUDA); DDP is `accelerator.prepare`, FSDP2 is torch's `fully_shard`, sharded checkpoints are
torch.distributed.checkpoint (engine/sharded.py), and the few collectives below are Accelerate's `gather`,
`reduce`, `broadcast` and `pad_across_processes`.

The rules:
- `World`: this process's rank among how many (from the launcher's environment, known before the group opens).
- `train.distributed` → `choose_strategy`: auto = DDP when there are several processes; fsdp = FSDP2 per repeated
  block (transformer layer / timm stage), then the root; none refuses a multi-process launch.
- Every rank trains; only rank 0 writes the run folder (lock, logs, metrics, checkpoints, model/, report). Rank 0
  opens the folder and broadcasts the outcome (its path, or the one-line error every rank then raises).
- Per step, the loss (for logging and the NaN guard) and the token count are summed over ranks; per evaluation,
  every rank's outputs are gathered and the rows repeated to even out the last batch are cut off, so the metrics
  are those of the whole validation set, once.
- Each rank has its own RNG stream (seed + rank, after the model is built identically everywhere); checkpoints keep
  every rank's RNG state (`RankRNG`), so a resume on the same number of processes is bit-identical."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from tuneforge.engine.snapshot import ProcessRNG, capture_rng, restore_rng
from tuneforge.errors import ConfigError

IGNORE = -100  # pad value for gathered integer tensors (labels, word ids): every metric and loss skips it


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> "World":
        """What torchrun / accelerate launch told this process (a plain `python` run is one process)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", str(size))))

    @property
    def main(self) -> bool:
        """The process that writes (the run folder, logs, checkpoints, model/)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def choose_strategy(wanted: str, world: World) -> str:
    """train.distributed → none | ddp | fsdp for this launch."""
    if not world.distributed:
        return "none"
    if wanted == "none":
        raise ConfigError(f"train.distributed: none, but {world.size} processes were launched; set "
                          "train.distributed: auto (DDP) or fsdp, or start one process")
    return "ddp" if wanted == "auto" else wanted


def check_supported(cfg, strategy: str, world: World) -> None:
    """What does not (yet) run on several processes: refused up front with one line each."""
    if strategy == "none":
        return
    tc, n = cfg.train, world.size
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus and world.local_size > gpus:
        raise ConfigError(f"{world.local_size} processes on this machine but {gpus} CUDA device(s): one process per "
                          f"GPU; launch with --nproc-per-node {gpus} (or set CUDA_VISIBLE_DEVICES)")
    if tc.head_epochs > 0:
        raise ConfigError(f"train.head_epochs (several training phases) is not supported on {n} processes yet: "
                          "the trainable set may not change under DDP / FSDP; train on one process, or use "
                          "train.freeze / train.lora in a single phase")
    if tc.lr == "auto":
        raise ConfigError(f"train.lr: auto runs the LR range test, which needs one process; run `tuneforge lr-find` "
                          f"first and set train.lr, then launch the {n} processes")
    if cfg.probe.enabled:
        raise ConfigError(f"probe.enabled (the strategy probe) trains its candidates in one process; run it once on "
                          f"one process, then set the strategy it chose in the recipe for the {n} processes")
    if tc.time_budget:
        raise ConfigError(f"train.time_budget is not supported on {n} processes yet (each process would time its "
                          "own steps and could stop at another one); set train.max_steps or train.epochs instead")
    if strategy == "fsdp" and tc.ema:
        raise ConfigError("train.ema is not supported with train.distributed: fsdp (the averaged weights would be "
                          "sharded); use train.distributed: ddp, or drop train.ema")
    if strategy == "fsdp" and tc.nan_policy == "rollback":
        raise ConfigError("train.nan_policy: rollback is not supported with train.distributed: fsdp; use stop or "
                          "skip, or train.distributed: ddp")


def rank_seed(seed: int, world: World) -> int:
    """Rank r's RNG seed for dropout and augmentation: rank 0 keeps the recipe's seed (a one-process run's
    stream), the others get their own, so ranks do not draw the same masks for their different rows."""
    return (seed + 1_000_003 * world.rank) % 2 ** 32


def threads_per_process(world: World) -> int:
    """Default torch threads: this machine's cores shared between the processes on it."""
    return max(1, len(os.sched_getaffinity(0)) // world.local_size)


# ---------------------------------------------------------------- wrapping the model


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: the longest ModuleList / Sequential of two or more same-type modules with
    parameters (transformer layers, timm stages); the outermost wins a tie. Empty when there is none."""
    best: list[nn.Module] = []
    for m in model.modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) < 2:
            continue
        children = list(m)
        if len({type(b) for b in children}) == 1 and all(any(True for _ in b.parameters()) for b in children):
            if len(children) > len(best):
                best = children
    return best


def shard_model(model: nn.Module, device: torch.device, precision: str, world: World) -> nn.Module:
    """FSDP2: each repeated block is one `fully_shard` unit (gathered for its forward / backward only), then the
    root takes the rest (embeddings, head). bf16 / fp16 runs gather parameters in that dtype and reduce gradients
    in fp32. In place: parameter names stay those of the plain model."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.to(device)
    mesh = init_device_mesh(device.type, (world.size,))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    for block in repeated_blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def wrap_model(model: nn.Module, strategy: str, accelerator, precision: str, world: World,
               compile_model: bool = False) -> nn.Module:
    """The module the loop trains: as prepared by Accelerate (one process: the model itself on its device; DDP:
    the DistributedDataParallel wrapper), or sharded in place (FSDP2). `compile_model`: torch.compile in place
    (`Module.compile`, so names and checkpoints are unchanged); with FSDP after sharding, as torch recommends."""
    if strategy == "fsdp":
        model = shard_model(model, accelerator.device, precision, world)
        if compile_model:
            model.compile()
        return model
    if compile_model:
        model.compile()
    return accelerator.prepare(model)


def training_bundle(bundle, model: nn.Module):
    """The bundle the loop runs: `bundle` itself when the model was not wrapped (one process; FSDP, in place),
    else a shallow copy holding the wrapper (DDP), so `bundle` keeps the plain model and its parameter names for
    freezing, head LRs and train mode."""
    if model is bundle.model:
        return bundle
    run = copy.copy(bundle)
    run.replace_model(model)
    return run


class MetaTwin:
    """A weightless copy of a model, taken before FSDP shards it: every parameter on the meta device (no memory),
    buffers copied. `materialize(weights)` turns it into a plain model holding those weights (the kept model is
    saved and evaluated unsharded, as one process would)."""

    def __init__(self, model: nn.Module):
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                for p in model.parameters()}
        self.model = copy.deepcopy(model, memo)

    def materialize(self, weights: dict[str, torch.Tensor], device) -> nn.Module:
        self.model.load_state_dict(weights, strict=True, assign=True)
        return self.model.to(device)


# ---------------------------------------------------------------- collectives the run needs


def broadcast_json(accelerator, obj=None):
    """Rank 0's JSON-able `obj` on every rank (length first, then the UTF-8 bytes)."""
    from accelerate.utils import broadcast

    data = json.dumps(obj).encode("utf-8") if accelerator.is_main_process else b""
    size = broadcast(torch.tensor([len(data)], dtype=torch.int64, device=accelerator.device))
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=accelerator.device)
    if accelerator.is_main_process:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return json.loads(bytes(broadcast(buf).cpu().tolist()).decode("utf-8"))


def reduce_step(accelerator, loss: torch.Tensor, share: float, tokens: int) -> tuple[torch.Tensor, int]:
    """(mean loss over the global batch, its non-padding tokens): one all-reduce per micro-batch. Every rank then
    logs and judges (NaN guard) the same loss."""
    stats = torch.stack([loss.detach().float() * share,
                         torch.tensor(float(tokens), device=loss.device)]).to(accelerator.device)
    total = accelerator.reduce(stats, reduction="sum")
    return total[0] / accelerator.num_processes, int(total[1].item())


def gather_rows(accelerator, data, rows: int):
    """Every rank's outputs / batch tensors, concatenated in rank order, cut to the global batch's `rows` real
    rows (each rank holds the same number of rows; the repeats at the end are dropped). Tensors of different
    lengths (text) are padded along dim 1 first: integers with IGNORE, floats with 0. Non-tensor values are dropped.

    Not `gather_for_metrics`: it drops repeated rows only for loaders Accelerate prepared, and ours shard
    themselves (data/sampling.py)."""
    if isinstance(data, torch.Tensor):
        if data.dim() >= 2:
            pad = IGNORE if not (data.is_floating_point() or data.dtype == torch.bool) else 0
            data = accelerator.pad_across_processes(data.contiguous(), dim=1, pad_index=pad)
        return accelerator.gather(data.contiguous())[:rows]
    if isinstance(data, dict):
        return {k: gather_rows(accelerator, v, rows) for k, v in data.items() if _has_tensor(v)}
    if isinstance(data, (list, tuple)):
        return type(data)(gather_rows(accelerator, v, rows) for v in data)
    return data


def _has_tensor(v) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, dict):
        return any(_has_tensor(x) for x in v.values())
    return isinstance(v, (list, tuple)) and any(_has_tensor(x) for x in v)


# ---------------------------------------------------------------- every rank's RNG in the checkpoint


def _pack_rng() -> dict[str, torch.Tensor]:
    """This process's RNG state as fixed-shape tensors (python and numpy scalars included), for a gather."""
    tensors, meta = capture_rng()
    version, mt, gauss = meta["python"]
    _, pos, has_gauss, cached = meta["numpy"]
    out = {"torch": tensors["rng.torch"], "numpy": tensors["rng.numpy"],
           "python": torch.tensor(mt, dtype=torch.int64),
           "scalars": torch.tensor([version, gauss is not None, gauss or 0.0, pos, has_gauss, cached],
                                   dtype=torch.float64)}
    out.update({k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.cuda.")})
    return out


def _unpack_rng(packed: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    version, has_gauss_py, gauss, pos, has_gauss, cached = packed["scalars"].tolist()
    meta = {"python": [int(version), packed["python"].tolist(), gauss if has_gauss_py else None],
            "numpy": ["MT19937", int(pos), int(has_gauss), float(cached)]}
    tensors = {"rng.torch": packed["torch"], "rng.numpy": packed["numpy"]}
    tensors.update({f"rng.{k}": v for k, v in packed.items() if k.startswith("cuda.")})
    return tensors, meta


class RankRNG(ProcessRNG):
    """Checkpoints hold every rank's RNG state (`rng.rank<r>.<stream>`, gathered to all ranks: a collective, so
    every rank captures together); each rank restores its own."""

    def __init__(self, accelerator, world: World):
        self.accelerator, self.world = accelerator, world

    def capture(self) -> tuple[dict[str, torch.Tensor], dict]:
        device, out = self.accelerator.device, {}
        for name, t in _pack_rng().items():
            gathered = self.accelerator.gather(t.to(device)[None]).cpu()
            out.update({f"rng.rank{r}.{name}": gathered[r].clone() for r in range(self.world.size)})
        return out, {"world_size": self.world.size}

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from tuneforge.engine.checkpoint import CheckpointError

        saved = meta.get("world_size", 1)
        if saved != self.world.size:
            raise CheckpointError(f"the checkpoint was written by {saved} process(es), this run has "
                                  f"{self.world.size}; resume with the same number of processes")
        prefix = f"rng.rank{self.world.rank}."
        restore_rng(*_unpack_rng({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}))


def summary(strategy: str, world: World, accelerator, batch_size: int, grad_accum: int) -> dict:
    """summary.json `distributed`: how the run was spread, and the batch one optimizer step sees."""
    backend = accelerator.state.backend if world.distributed else None
    return {"strategy": strategy, "world_size": world.size, "backend": backend, "device": accelerator.device.type,
            "per_device_batch": batch_size, "global_batch": batch_size * world.size * grad_accum}


def global_batch_line(world: World, batch_size: int, grad_accum: int) -> Optional[str]:
    if not world.distributed:
        return None
    return (f"distributed: {world.size} processes x batch {batch_size} x accum {grad_accum} = global batch "
            f"{batch_size * world.size * grad_accum}")

