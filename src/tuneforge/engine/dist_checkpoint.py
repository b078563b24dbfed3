"""Checkpoints of a run on several processes, as crash-safe as one process's (engine/checkpoint.py).

DDP (`RankCheckpointer`): every rank holds the same weights and optimizer state, so rank 0 writes the usual
checkpoint (model.safetensors, trainer.safetensors, trainer.json) with every rank's RNG state in it; the other
ranks take part in gathering it, and all ranks wait until it is on disk.

FSDP (`ShardedCheckpointer`): no rank holds the whole state. The weights and optimizer state are saved sharded by
torch.distributed.checkpoint (DCP) into `state/` of the usual hidden temp folder; rank 0 adds trainer.safetensors
(RNG of every rank, callbacks' tensors) and trainer.json (with the SHA-256 of every file, shards included); every
rank waits at a barrier before rank 0's one `rename` makes `step-N` visible. A kill of any rank at any point leaves
only complete step-* folders. best.safetensors holds the whole weights (gathered to rank 0), as for one process,
so the kept model is saved unsharded."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from tuneforge.engine import chaos
from tuneforge.engine.checkpoint import (META_FILE, TRAINER_FILE, Checkpointer, _discard, _file_sha256,
                                         _save_synced, _write_synced, best_path, list_checkpoints, save_weights)
from tuneforge.engine.distributed import World
from tuneforge.engine.snapshot import TrainingSnapshot
from tuneforge.utils import fsync_path

STATE_DIR = "state"  # the DCP folder inside a sharded checkpoint


class RankCheckpointer(Checkpointer):
    """DDP: rank 0 writes (the base class); the others join the RNG gather; then everyone waits for the files
    (a NaN rollback on any rank must find the same latest checkpoint)."""

    def __init__(self, run_dir: Path, keep: int, snapshot: TrainingSnapshot, best_weights, world: World, accelerator):
        super().__init__(run_dir, keep, snapshot, best_weights)
        self.world, self.accelerator = world, accelerator

    def on_eval_end(self, state, record: dict) -> None:
        if self.world.main:
            super().on_eval_end(state, record)
        elif self.keep > 0 or state.is_best:  # the same condition as the base class: the same collectives
            self.snapshot.rng.capture()
        self.accelerator.wait_for_everyone()


class ShardedSnapshot(TrainingSnapshot):
    """FSDP2's training state: model and optimizer as DCP state dicts (each rank its shards), the rest as usual."""

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The whole weights on rank 0's CPU (empty elsewhere); a collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def sharded_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model, optim = get_state_dict(self.model, self.optimizer)
        return {"model": model, "optim": optim}

    def restore(self, state, model: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], meta: dict) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        self.rng.restore(tensors, meta["rng"])  # first: it refuses another world size before DCP reshards anything
        sharded = self.sharded_state()
        dcp.load(sharded, checkpoint_id=str(Path(meta["dir"]) / meta["sharded"]))
        set_state_dict(self.model, self.optimizer, model_state_dict=sharded["model"],
                       optim_state_dict=sharded["optim"])
        self.restore_trainer(state, tensors, meta)


class ShardedCheckpointer(Checkpointer):
    """FSDP: best.safetensors from the gathered weights, then the sharded checkpoint (see the module doc)."""

    def __init__(self, run_dir: Path, keep: int, snapshot: ShardedSnapshot, world: World, accelerator):
        super().__init__(run_dir, keep, snapshot)
        self.world, self.accelerator = world, accelerator

    def on_eval_end(self, state, record: dict) -> None:
        if state.is_best:
            weights = self.snapshot.full_weights()
            if self.world.main:
                save_weights(best_path(self.dir.parent), weights, {"step": str(state.step),
                                                                  "epoch": str(record["epoch"])})
            del weights
        if self.keep > 0:
            write_sharded_checkpoint(self.dir, state.step, self.snapshot, state, self.world, self.accelerator)
            if self.world.main:
                for old in list_checkpoints(self.dir)[:-self.keep]:
                    _discard(old)
        self.accelerator.wait_for_everyone()


def write_sharded_checkpoint(folder: Path, step: int, snapshot: ShardedSnapshot, state, world: World,
                             accelerator) -> Path:
    """checkpoints/step-N from every rank: DCP shards + rank 0's trainer files in a hidden temp folder (a fixed
    name every rank knows), fsynced, then one rename after a barrier."""
    import torch.distributed.checkpoint as dcp

    final = folder / f"step-{step:08d}"
    tmp = folder / f".{final.name}.sharded.tmp"
    if world.main:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of the same step (a crash, or a rollback's replay)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    dcp.save(snapshot.sharded_state(), storage_writer=dcp.FileSystemWriter(str(tmp / STATE_DIR), sync_files=True))
    tensors, meta = snapshot.capture_trainer(state, None)  # gathers every rank's RNG: all ranks call it
    accelerator.wait_for_everyone()  # every shard is on disk
    if world.main:
        files = {str(p.relative_to(tmp)): _file_sha256(p, tmp, "") for p in sorted((tmp / STATE_DIR).rglob("*"))
                 if p.is_file()}
        files[TRAINER_FILE] = _save_synced(tmp / TRAINER_FILE, tensors, {"step": str(step)})
        body = {**meta, "step": step, "files": files, "sharded": STATE_DIR, "world_size": world.size}
        _write_synced(tmp / META_FILE, json.dumps(body).encode("utf-8"))
        fsync_path(tmp / STATE_DIR)
        fsync_path(tmp)
    chaos.point("checkpoint_write")
    accelerator.wait_for_everyone()  # no rank is still writing into tmp
    if world.main:
        if final.exists():
            _discard(final)
        os.rename(tmp, final)
        fsync_path(folder)
    return final
