"""LR range test (Smith 2015, as in fastai): raise the LR exponentially for a few dozen steps, watch the loss.

The smoothed loss (an exponential average, bias-corrected) gives three classic suggestions: `steepest` (where it
falls fastest per log-LR, before its minimum), `valley` (fastai's default: halfway along the longest stretch over
which it keeps falling) and `minimum/10` (a tenth of the LR at its minimum). `SUGGESTION` is the one used; the
others are recorded. `lr: auto` runs one test per kind of phase (run.choose_lrs): the new head alone (on cached
backbone features where possible) and the whole model."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from tuneforge.engine.loop import forward
from tuneforge.engine.optim import create_optimizer


SUGGESTION = "valley"


def lr_range_test(bundle, task, loader, tc, accelerator, plot_path: Path | None, log=print,
                  start: float = 1e-7, end: float = 1.0, steps: int = 80, what: str = "the model") -> dict:
    """Weights, optimizer and RNG are restored afterwards, so training starts exactly as it would have."""
    model = bundle.model
    saved = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    optimizer = create_optimizer(model, tc.model_copy(update={"lr": start, "layer_decay": None, "head_lr": None}))
    gamma = (end / start) ** (1 / max(steps - 1, 1))
    lrs, losses, average, best = [], [], 0.0, math.inf
    model.train()
    batches = iter(loader)
    for i in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        lr = start * gamma ** i
        for g in optimizer.param_groups:
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
    model.load_state_dict(saved)
    torch.set_rng_state(rng)
    suggestions = {"steepest": _suggest(lrs, losses), "valley": _valley(lrs, losses),
                   "minimum/10": lrs[min(range(len(losses)), key=losses.__getitem__)] / 10}
    suggested = suggestions[SUGGESTION]
    if plot_path is not None:
        _plot(lrs, losses, suggested, plot_path)
    log(f"lr-find ({what}): {len(lrs)} steps from {start:g} to {lrs[-1]:.3g}; suggested lr {suggested:.3g} "
        f"({SUGGESTION}; steepest {suggestions['steepest']:.3g}, minimum/10 {suggestions['minimum/10']:.3g})"
        f"{f'; plot {plot_path}' if plot_path else ''}")
    return {"lrs": lrs, "losses": losses, "suggested_lr": suggested, "suggestions": suggestions}


BETA = 0.9  # smoothing of the loss curve (~10 steps)


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
    stop = min(range(len(losses)), key=losses.__getitem__)
    stop = max(stop, 3)
    grads = [(losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1])) for i in
             range(1, stop)]
    i = min(range(len(grads)), key=grads.__getitem__) + 1
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
