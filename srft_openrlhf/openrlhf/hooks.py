"""Hook-point checking: does the installed OpenRLHF still have what the SRFT patches rely on?

``check_hook_points`` verifies ``HOOK_POINTS`` (``srft_openrlhf.openrlhf``) against the installed
OpenRLHF and raises ``HookPointError`` naming every one that moved (``patches.install`` runs it
before it assigns anything). ``unwrap`` / ``rewrap`` go
between a Ray actor class and the Python class behind it (the patches subclass the latter).
Importing this module imports ray, not OpenRLHF; the checks import what they resolve.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import inspect
from types import CodeType
from typing import Any

import ray

from srft_openrlhf.errors import UserError
from srft_openrlhf.openrlhf import HOOK_POINTS, OPENRLHF_VERSION, HookPoint


class HookPointError(UserError):
    """The installed OpenRLHF lacks (or changed) something the SRFT patches rely on."""


def unwrap(obj: Any) -> Any:
    """The Python class behind a Ray actor class (``@ray.remote class X``); anything else as is."""
    meta = getattr(obj, "__ray_metadata__", None)
    return meta.modified_class.__ray_actor_class__ if meta is not None else obj


def rewrap(cls: type, like: Any) -> Any:
    """``cls`` as a Ray actor class with the options of the Ray actor class ``like``."""
    options = dict(like._default_options)
    return ray.remote(**options)(cls) if options else ray.remote(cls)


def _resolve(target: str) -> Any:
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(unwrap(obj), part)
    return unwrap(obj)


def _code_names(code: CodeType) -> set[str]:
    """Names and string constants a code object (and the functions nested in it) uses."""
    names = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


def _problems(hook: HookPoint) -> list[str]:
    try:
        obj = _resolve(hook.target)
    except (ImportError, AttributeError) as e:
        return [f"not found ({type(e).__name__}: {e})"]
    problems = []
    if hook.params is not None:
        try:
            names = [p for p in inspect.signature(obj).parameters if p != "self"]
        except (TypeError, ValueError):
            names = None
        if names is None or names[: len(hook.params)] != list(hook.params):
            problems.append(
                f"signature is ({', '.join(names or ['?'])}), expected it to start with ({', '.join(hook.params)})"
            )
    if hook.reads:
        code = getattr(inspect.unwrap(obj), "__code__", None)  # through decorators such as torch.no_grad
        used = _code_names(code) if code is not None else set()
        missing = [name for name in hook.reads if name not in used]
        if missing:
            problems.append(f"no longer reads {', '.join(missing)}")
    if hook.fields:
        have = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        missing = [name for name in hook.fields if name not in have]
        if missing:
            problems.append(f"has no field(s) {', '.join(missing)}")
    return problems


def check_hook_points(hooks: tuple[HookPoint, ...] = HOOK_POINTS) -> None:
    """Raise ``HookPointError`` listing every hook point the installed OpenRLHF moved."""
    lines = [f"  - {hook.target}: {problem} (SRFT: {hook.srft})" for hook in hooks for problem in _problems(hook)]
    if lines:
        installed = importlib.metadata.version("openrlhf")
        raise HookPointError(
            f"openrlhf {installed} does not have what the SRFT patches rely on (written for "
            f"openrlhf=={OPENRLHF_VERSION}):\n" + "\n".join(lines) + "\nInstall openrlhf=="
            f"{OPENRLHF_VERSION} (requirements-gpu.txt), or port the SRFT patches (srft_openrlhf/openrlhf/"
            "patches.py and the modules it installs) and HOOK_POINTS to this version."
        )
