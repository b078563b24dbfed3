"""A training snapshot: everything a run needs to continue bit-exactly, as tensors (safetensors) and JSON (never
pickle).

Model weights; optimizer state (tensors flattened to `optimizer.<param id>.<name>`, the rest JSON); LR scheduler;
grad scaler; RNG states (python, numpy, torch CPU, each CUDA device); the LoopState (step, epoch, position in the
epoch, counters, best metric, metrics history) and any extra stateful objects (early stopping, NaN guard, EMA)."""
from __future__ import annotations

import dataclasses
import random
from typing import Any, Optional

import numpy as np
import torch

FORMAT = 1


# ---------------------------------------------------------------- RNG


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.cpu()
    meta = {"python": [version, list(mt), gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    version, mt, gauss = meta["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class ProcessRNG:
    """The RNG streams a snapshot keeps: this process's (one-process runs). Several processes keep every rank's
    (engine/distributed.RankRNG)."""

    def capture(self) -> tuple[dict[str, torch.Tensor], dict]:
        return capture_rng()

    def restore(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        restore_rng(tensors, meta)


# ---------------------------------------------------------------- optimizer


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, torch.Tensor):  # a non-state scalar tensor (e.g. a tensor lr)
        return v.item()
    return v


def cpu_tensors(state: dict[str, torch.Tensor], copy: bool = True) -> dict[str, torch.Tensor]:
    """CPU tensors for safetensors. copy=False shares memory with the live ones (for writing right away; saves a
    model-plus-optimizer-sized spike), cloning only tensors that share storage (tied weights), which
    safetensors refuses."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().to("cpu")
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone().contiguous() if copy or ptr in seen else v.contiguous()
        seen.add(ptr)
    return out


def flatten_optimizer(sd: dict, copy: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    tensors = cpu_tensors(tensors, copy)
    groups = [{k: _jsonable(v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "ids": [str(p) for p in sd["state"]]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for pid in meta["ids"]:
        state[int(pid)] = dict(meta["scalars"].get(pid, {}))
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- the whole trainer


def _split(d: dict, prefix: str, tensors: dict) -> dict:
    """A callback's state → JSON, its tensors (also one level down, e.g. EMA weights) moved into `tensors`."""
    out = {}
    for k, v in d.items():
        if isinstance(v, torch.Tensor):
            tensors[prefix + k] = v.detach().cpu().clone().contiguous()
            out[k] = {"__tensor__": prefix + k}
        elif isinstance(v, dict) and v and all(isinstance(x, torch.Tensor) for x in v.values()):
            out[k] = {"__tensors__": [prefix + k + "." + n for n in v]}
            for n, x in v.items():
                tensors[f"{prefix}{k}.{n}"] = x.detach().cpu().clone().contiguous()
        else:
            out[k] = v
    return out


def _join(d: dict, prefix: str, tensors: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and "__tensor__" in v:
            out[k] = tensors[v["__tensor__"]]
        elif isinstance(v, dict) and "__tensors__" in v:
            out[k] = {name[len(prefix + k) + 1:]: tensors[name] for name in v["__tensors__"]}
        else:
            out[k] = v
    return out


def train_state_dict(state) -> dict:
    return dataclasses.asdict(state)


def load_train_state(state, saved: dict) -> None:
    for f in dataclasses.fields(state):
        if f.name in saved:
            setattr(state, f.name, saved[f.name])


class TrainingSnapshot:
    """Captures / restores one phase's full training state. `stateful` maps a name to an object with
    state_dict() / load_state_dict() (early stopping, NaN guard, EMA); `phase` is the phase's index in the run;
    `rng` the RNG streams it keeps."""

    def __init__(self, model: torch.nn.Module, optimizer, scheduler, scaler, stateful: dict[str, Any], config: dict,
                 phase: int = 0, rng: ProcessRNG = ProcessRNG()):
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler
        self.stateful, self.config, self.phase, self.rng = stateful, config, phase, rng

    def capture(self, state, copy: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
        """→ (model tensors, trainer tensors, JSON). copy=True: CPU copies, safe to keep while training goes on;
        copy=False: views of the live tensors, to be written before the next step."""
        model = cpu_tensors(self.model.state_dict(), copy)
        opt_t, opt_meta = flatten_optimizer(self.optimizer.state_dict(), copy)
        tensors, meta = self.capture_trainer(state, opt_meta)
        return model, {**opt_t, **tensors}, meta

    def capture_trainer(self, state, optimizer_meta: Optional[dict]) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything but the model and the optimizer tensors: RNG, callbacks' tensors and the JSON."""
        rng_t, rng_meta = self.rng.capture()
        meta = {
            "format": FORMAT,
            "phase": self.phase,
            "train_state": train_state_dict(state),
            "optimizer": optimizer_meta,
            "scheduler": {k: _jsonable(v) for k, v in self.scheduler.state_dict().items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_meta,
            "callbacks": {},
            "config": self.config,
        }
        cb_t: dict[str, torch.Tensor] = {}
        for name, obj in self.stateful.items():
            meta["callbacks"][name] = _split(obj.state_dict(), f"cb.{name}.", cb_t)
        return {**rng_t, **cb_t}, meta

    def restore(self, state, model: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], meta: dict) -> None:
        device = next(self.model.parameters()).device
        self.model.load_state_dict({k: v.to(device) for k, v in model.items()})
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, meta["optimizer"]))
        self.restore_trainer(state, tensors, meta)

    def restore_trainer(self, state, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Scheduler, scaler, callbacks, loop state, then the RNG."""
        self.scheduler.load_state_dict(meta["scheduler"])
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        for name, obj in self.stateful.items():
            if name in meta.get("callbacks", {}):
                obj.load_state_dict(_join(meta["callbacks"][name], f"cb.{name}.", tensors))
        load_train_state(state, meta["train_state"])
        self.rng.restore(tensors, meta["rng"])  # last: nothing above may consume random numbers afterwards
