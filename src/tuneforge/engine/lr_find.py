"""LR range test (Smith 2015, as in fastai): raise the LR exponentially for a few dozen steps, watch the loss.

The smoothed loss (an exponential average, bias-corrected) gives three classic suggestions: `steepest` (where it
falls fastest per log-LR, before its minimum), `valley` (fastai's default: halfway along the longest stretch over
which it keeps falling) and `minimum/10` (a tenth of the LR at its minimum). All three are recorded; `lr: auto`
runs one test per kind of phase (run.choose_lrs) and uses `RULES`: for the new head alone (on cached backbone
features where possible) the valley; for the pretrained body, with the head held at train.head_lr when one is set,
a tenth of the LR at the loss minimum (the valley and the steepest point wander on curves that barely move before
the loss turns up; benchmarks/lr_auto_check.py). The suggestion is used only within half a decade of the LR the
preset's rules give for the model and data (`guard`); further away, the prior is used and the log says why."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Optional


from tuneforge.engine.loop import forward
from tuneforge.engine.optim import create_optimizer
from tuneforge.engine.snapshot import capture_rng, restore_rng


RULES = {"head": "valley", "body": "minimum/10"}  # the suggestion used, by what the test sweeps
TRUST = 10 ** 0.5  # a suggestion more than half a decade from the prior is not trusted


def guard(suggested: float, prior: float, why: str) -> tuple[float, str]:
    """The range test's suggestion, or the prior when they are more than half a decade apart → (lr, what was done).
    A range test confounds the LR with training progress: a head that starts good (a siamese cosine head) or an
    output that cannot blow up keeps the loss falling far past a fine-tuning LR, and its minimum lands there."""
    if prior / TRUST <= suggested <= prior * TRUST:
        return suggested, f"within half a decade of the prior {prior:g} ({why})"
    return prior, (f"the suggestion {suggested:.3g} is more than half a decade from the prior {prior:g} ({why}): the "
                   "prior is used")


def lr_range_test(bundle, task, loader, tc, accelerator, plot_path: Path | None, log=print,
                  start: float = 1e-7, end: float = 1.0, steps: int = 80, what: str = "the model",
                  rule: str = "minimum/10", fixed: Optional[tuple[set[str], float]] = None) -> dict:
    """Weights, optimizer and RNG are restored afterwards, so training starts exactly as it would have.
    `fixed`: (parameter names, LR) that keep their own LR while the rest is swept (the new head at train.head_lr
    while the pretrained body's LR is found)."""
    model = bundle.model
    saved = copy.deepcopy(model.state_dict())
    rng = capture_rng()
    names, fixed_lr = fixed or (set(), None)
    optimizer = create_optimizer(model, tc.model_copy(update={"lr": start, "layer_decay": None,
                                                              "head_lr": fixed_lr}), names)
    swept = [g for g in optimizer.param_groups if not (fixed_lr and g["lr"] == fixed_lr)]
    model.train()
    lrs, losses = _sweep(bundle, task, loader, accelerator, optimizer, swept, start, end, steps)
    model.load_state_dict(saved)
    restore_rng(*rng)
    suggestions = {"steepest": _suggest(lrs, losses), "valley": _valley(lrs, losses),
                   "minimum/10": _minimum(lrs, losses) / 10}
    suggested = suggestions[rule]
    if plot_path is not None:
        _plot(lrs, losses, suggested, plot_path)
    log(f"lr-find ({what}): {len(lrs)} steps from {start:g} to {lrs[-1]:.3g}; suggested lr {suggested:.3g} "
        f"({rule}; " + ", ".join(f"{k} {v:.3g}" for k, v in suggestions.items() if k != rule) + ")"
        f"{f'; plot {plot_path}' if plot_path else ''}")
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggested, "suggestions": suggestions, "rule": rule}


def _sweep(bundle, task, loader, accelerator, optimizer, swept: list[dict], start: float, end: float,
           steps: int) -> tuple[list[float], list[float]]:
    """Raise the swept groups' LR exponentially, one batch per step → (LRs, smoothed losses); stops once the loss
    is 4x its best or not finite."""
    gamma = (end / start) ** (1 / max(steps - 1, 1))
    lrs, losses, average, best = [], [], 0.0, math.inf
    batches = iter(loader)
    for i in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        lr = start * gamma ** i
        for g in swept:
            g["lr"] = lr
        outputs, batch = forward(task, bundle, batch, accelerator)
        loss = task.loss(outputs, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        average = BETA * average + (1 - BETA) * value
        smooth = average / (1 - BETA ** (i + 1))  # bias-corrected: the first values are not pulled to 0
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if not math.isfinite(value) or smooth > 4 * best:
            break
    return lrs, losses


BETA = 0.9  # smoothing of the loss curve (~10 steps)
BURN_IN = 10  # the first ~1 / (1 - BETA) points average too few batches to locate a minimum or a slope


def _minimum(lrs: list[float], losses: list[float]) -> float:
    """The LR where the smoothed loss is lowest, its first BURN_IN points left out."""
    skip = BURN_IN if len(losses) > 2 * BURN_IN else 0
    return float(lrs[min(range(skip, len(losses)), key=losses.__getitem__)])


def _valley(lrs: list[float], losses: list[float]) -> float:
    """Halfway along the longest decreasing run of the smoothed loss (a longest decreasing subsequence, so a
    bump does not cut the run short)."""
    n = len(losses)
    if n < 5:
        return lrs[0]
    length, prev = [1] * n, [-1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[j] > losses[i] and length[j] + 1 > length[i]:
                length[i], prev[i] = length[j] + 1, j
    end = max(range(n), key=length.__getitem__)
    first = end
    while prev[first] != -1:
        first = prev[first]
    return float(lrs[first + (end - first) // 2])


def _suggest(lrs: list[float], losses: list[float]) -> float:
    """The LR where the smoothed loss falls fastest (per log-LR), searched before the minimum."""
    if len(lrs) < 5:
        return lrs[0]
    skip = BURN_IN if len(losses) > 2 * BURN_IN else 1
    stop = max(lrs.index(_minimum(lrs, losses)), skip + 2)
    grads = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in
             range(skip, stop)]
    i = min(range(len(grads)), key=grads.__getitem__) + skip
    return float(lrs[i])


def _plot(lrs, losses, suggested, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggested, color="red", linestyle="--", label=f"suggested {suggested:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed training loss")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
