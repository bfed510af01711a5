"""Plugins: Python modules a job names (`plugins:`) that register extensions (a stage, a judge
method, a reward source, an advantage estimator, a policy loss, a job-file section). They are
imported before the job is validated and again in every actor that builds from a registry.

    load_plugins(["my_pkg.cai_ext", "ext/my_stage.py"])
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

_loaded: dict[str, object] = {}


def load_plugins(specs: list[str]) -> None:
    """Import each module name or .py file once (idempotent); ValueError naming the plugin."""
    for spec in specs:
        if spec in _loaded:
            continue
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"plugins: {spec!r} is not a module name or a .py file")
        try:
            _loaded[spec] = _import(spec)
        except Exception as exc:  # the plugin's own error, whatever it is, in one line
            raise ValueError(f"plugins: cannot import {spec} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _import(spec: str):
    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file")
        name = f"cai_ray_plugin_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        try:
            mod_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    import os

    if os.getcwd() not in sys.path:  # as `python -m` would find it
        sys.path.append(os.getcwd())
    return importlib.import_module(spec)
