"""Keep ``torch.optim`` from importing the compiler stack (``torch._dynamo``) in a process that never compiles.

``import torch`` alone does not import ``torch._dynamo``; on a 2-core CPU that import costs about
as long again (~2.5 s), paid by every (re)started worker before its first step. torch.optim
imports it from two places: the compile-disabled methods (``add_param_group``, ``state_dict``,
``load_state_dict``, ``zero_grad``; ``skip_compiler_import_for_optimizers``) and every ``step()``
(``torch.optim.optimizer._use_grad_for_differentiable`` runs ``import torch._dynamo`` for two
graph breaks, no-ops outside ``torch.compile``; ``skip_compiler_import_for_step``).

Used only where nothing is compiled (the worker without ``--compile``, the checkpoint
load-probe). DistributedDataParallel imports it from two more places, each rank of a multi-process
run once: its constructor reads ``torch._dynamo.utils.get_optimize_ddp_mode()`` (a setting only
``torch.compile`` acts on) and its forward enters a compile-disabled context manager
(``wrap_in_ddp_without_compiler_import``).
"""
from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

# What DDP's constructor asks dynamo: anything but "python_reducer" (compiled autograd's reducer,
# only ever used under torch.compile) leaves DDP on its C++ reducer. torch's own default
# (``torch._dynamo.config.optimize_ddp = True``) reads as "ddp_optimizer".
UNCOMPILED_DDP_MODE = "ddp_optimizer"


def skip_compiler_import_for_optimizers(torch: Any) -> int:
    """Let ``torch.optim.Optimizer``'s compile-disabled methods run as the plain functions they are.

    torch wraps ``add_param_group``, ``load_state_dict``, ``state_dict`` and ``zero_grad`` in
    ``torch._compile._disable_dynamo``, whose first call imports the whole compiler stack
    (``torch._dynamo``, about as long as ``import torch`` itself) just to mark the function "never
    compile". The wrapper caches that marked function on the plain one as ``__dynamo_disable``;
    caching the plain function there instead skips the import. Nothing changes for a process that
    never compiles anything; a process that compiles must not call this (the methods would lose
    their "never compile" marker). Should torch change the mechanism, the attribute is simply not
    read and the import happens as before (slower, never wrong). Returns how many were set.
    """
    try:
        marker = torch._compile._disable_dynamo(lambda: None).__code__
    except AttributeError:
        return 0
    count = 0
    for value in vars(torch.optim.Optimizer).values():
        plain = getattr(value, "__wrapped__", None)
        if plain is not None and getattr(value, "__code__", None) is marker:
            setattr(plain, "__dynamo_disable", plain)
            count += 1
    return count


def skip_compiler_import_for_step(torch: Any, optimizer: Any) -> bool:
    """Make ``optimizer.step()`` run the optimizer's own step without torch's graph-break wrapper.

    torch wraps each built-in optimizer's ``step`` twice: ``Optimizer.profile_hook_step`` (a
    profiler label, step pre/post hooks) around ``_use_grad_for_differentiable`` (grad mode set to
    ``defaults["differentiable"]``, and ``torch._dynamo.graph_break()`` on either side, which
    imports ``torch._dynamo`` on every call). The replacement, set on this instance only, is
    torch's own ``profile_hook_step`` (label and hooks alike) around the same grad-mode switch and
    the same step, less the import: identical math. Only when the wrappers are exactly torch's
    (their code objects match); else nothing changes (slower, never wrong) and False is returned.
    """
    try:
        optim = sys.modules[torch.optim.Optimizer.__module__]  # torch.optim.optimizer (not an attribute)
        profile_code = torch.optim.Optimizer.profile_hook_step(lambda: None).__code__
        use_grad_code = optim._use_grad_for_differentiable(lambda: None).__code__
    except (AttributeError, KeyError):
        return False
    hooked = type(optimizer).step
    use_grad = getattr(hooked, "__wrapped__", None)
    body = getattr(use_grad, "__wrapped__", None)
    if (body is None or getattr(hooked, "__code__", None) is not profile_code
            or getattr(use_grad, "__code__", None) is not use_grad_code):
        return False

    def without_graph_breaks(self: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return body(self, *args, **kwargs)

    optimizer.step = types.MethodType(torch.optim.Optimizer.profile_hook_step(without_graph_breaks), optimizer)
    return True


def wrap_in_ddp_without_compiler_import(torch: Any, wrap: Callable[[], Any]) -> Any:
    """``wrap()`` (which builds the ``DistributedDataParallel`` module) without ``import torch._dynamo``.

    Only for a process that never compiles. Two places in DDP import the compiler stack:

    - the constructor reads ``torch._dynamo.utils.get_optimize_ddp_mode()`` through ``torch``'s
      lazy attribute, only to learn whether compiled autograd's python reducer is asked for. While
      ``wrap()`` runs, ``torch._dynamo`` is a stand-in that answers torch's default
      (``UNCOMPILED_DDP_MODE``, the C++ reducer, exactly what an uncompiled DDP uses); it is removed
      right after, and a real ``import torch._dynamo`` still finds the real module (the import
      system does not read the attribute). Already imported: nothing is stood in for.
    - every forward enters ``DDP._inside_ddp_forward``, wrapped in ``torch._disable_dynamo`` (the
      same lazy wrapper as the optimizer methods above); its plain function is cached as its own
      "never compile" form, as ``skip_compiler_import_for_optimizers`` does.

    Same module, same reducer, same math; should torch move either place, the import simply
    happens as before (slower, never wrong).
    """
    _skip_compiler_import_for_ddp_forward(torch)
    if "torch._dynamo" in sys.modules or "_dynamo" in vars(torch):
        return wrap()
    stand_in = types.SimpleNamespace(
        utils=types.SimpleNamespace(get_optimize_ddp_mode=lambda: UNCOMPILED_DDP_MODE))
    torch._dynamo = stand_in
    try:
        return wrap()
    finally:
        if vars(torch).get("_dynamo") is stand_in:
            del torch._dynamo


def _skip_compiler_import_for_ddp_forward(torch: Any) -> bool:
    """Cache ``DDP._inside_ddp_forward``'s plain function as its compile-disabled form (see above)."""
    try:
        marker = torch._compile._disable_dynamo(lambda: None).__code__
        from torch.nn.parallel import DistributedDataParallel
    except (AttributeError, ImportError):
        return False
    lazy = getattr(getattr(DistributedDataParallel, "_inside_ddp_forward", None), "__wrapped__", None)
    plain = getattr(lazy, "__wrapped__", None)
    if plain is None or getattr(lazy, "__code__", None) is not marker:
        return False
    setattr(plain, "__dynamo_disable", plain)
    return True
