"""tuneforge: fine-tune pretrained models on your own data with one YAML recipe or one Python call."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def train(recipe: str | Path | dict, output: str | None = None, overwrite: bool = False, quiet: bool = False,
          resume: bool = False, **overrides: Any):
    """Train from a recipe path or dict. Overrides use `__` for dots: `train(r, train__lr=3e-5)`.
    resume=True continues the run already in `output` from its latest checkpoint (or starts it).

    Returns a RunResult with `.metrics` (final eval of the kept model), `.summary` and `.run_dir`."""
    from tuneforge.run import train as _train

    return _train(recipe, overrides, output=output, overwrite=overwrite, resume=resume, quiet=quiet)


def resume(run_dir: str | Path, quiet: bool = False):
    """Continue an interrupted run from its latest complete checkpoint (bit-identical to an uninterrupted run)."""
    from tuneforge.run import resume as _resume

    return _resume(run_dir, quiet=quiet)


__all__ = ["train", "resume", "__version__"]
