"""Load a PyTorch ``.pth`` state dict into a module with strict checks.

``load_state_dict(strict=True)`` already rejects missing and unexpected
keys; shapes are compared first so that a mismatch names every offending
tensor at once instead of stopping at the first.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class WeightsMismatchError(ValueError):
    """The weight file does not fit the module it is meant for."""


def load_state_dict(module: nn.Module, path: Path) -> nn.Module:
    """Load ``path`` into ``module`` and return it in eval mode."""
    # weights_only refuses pickled code: a weight file is data, nothing more.
    state = torch.load(path, map_location="cpu", weights_only=True)
    check_state_dict(module, state, source=path.name)
    module.load_state_dict(state, strict=True)
    return module.eval()


def check_state_dict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str
) -> None:
    """Raise ``WeightsMismatchError`` unless keys and shapes match exactly."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    problems = []
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}")
    for name in sorted(expected.keys() & found.keys()):
        if expected[name] != found[name]:
            problems.append(f"{name} is {found[name]}, expected {expected[name]}")
    if problems:
        raise WeightsMismatchError(
            f"{source} does not fit {type(module).__name__}: "
            + "; ".join(problems[:10])
        )
