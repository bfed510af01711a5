"""`torch` for the pure-math modules that a job file's validation reads, imported at first use.

The registries of this package (the RL algorithms and the advantage estimators they name, with the
roles each needs) are read when a job file is loaded, so a bad job file fails in half a second
instead of after torch's 1.5-second import, and `cai-ray` answers bad input before it loads any
framework. Use it as torch: `from cai_ray.algos.lazy import torch`, then `torch.zeros(...)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_module: ModuleType | None = None


class _Torch:
    def __getattr__(self, name: str):
        global _module
        if _module is None:
            _module = importlib.import_module("torch")
        return getattr(_module, name)


torch = _Torch()
