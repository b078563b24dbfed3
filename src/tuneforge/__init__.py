"""tuneforge: fine-tune pretrained models on your own data with one YAML recipe or one Python call."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__version__ = "0.1.0"


def train(recipe: str | Path | dict, output: str | None = None, overwrite: bool = False, quiet: bool = False,
          **overrides: Any):
    """Train from a recipe path or dict. Overrides use `__` for dots: `train(r, train__lr=3e-5)`.

    Returns a RunResult with `.metrics` (final eval of the kept model), `.summary` and `.run_dir`."""
    from tuneforge.run import train as _train

    return _train(recipe, overrides, output=output, overwrite=overwrite, quiet=quiet)


__all__ = ["train", "__version__"]
