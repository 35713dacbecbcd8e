"""Forward hooks and evaluation mode for the length of one block of code.

Measuring a model (calibration statistics, activations, shapes, timings) runs it in eval
mode with a few forward hooks, and must leave it exactly as it was, also when the forward
raises::

    with eval_mode(model, {name: record(name) for name in names}, kind="pre", grad=False):
        model(x)

On exit every hook is removed and every module gets back its own training flag (a model
in training may hold frozen submodules in eval mode; ``model.train(was)`` would lose that).
A module added while the block ran (a layer replaced by its compressed form) takes its
parent's restored flag, as ``model.train(was)`` would have given it.

``hooks`` is a mapping ``{module or qualified name: hook}``, every hook of kind ``kind``, or
an iterable of ``(module or name, hook)`` / ``(module or name, hook, kind)`` tuples (several
hooks on one module, mixed kinds). Kinds, as torch calls them:

* ``"forward"``: ``hook(module, args, output)``, may return a replacement output;
* ``"pre"``: ``hook(module, args)``, may return replacement args;
* ``"forward_kwargs"`` / ``"pre_kwargs"``: the same with the call's keyword arguments,
  ``hook(module, args, kwargs, output)`` / ``hook(module, args, kwargs)``.

:func:`hooked` registers hooks alone, for code that runs a model in the mode it is in
(a block of a model that the caller already put in eval mode, a training step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn

from .errors import NetslimError, bad_param, shown, unknown_name

HookKind = Literal["forward", "pre", "forward_kwargs", "pre_kwargs"]
KINDS: tuple[str, ...] = ("forward", "pre", "forward_kwargs", "pre_kwargs")
Target = nn.Module | str
Hooks = Mapping[Any, Callable[..., Any]] | Iterable[tuple]
Grad = bool | Literal["inference"] | None


def _specs(hooks: Hooks | None, kind: str) -> list[tuple[Target, Callable[..., Any], str]]:
    """``hooks`` as ``(target, hook, kind)`` triples, each checked (nothing is registered yet)."""
    if hooks is None:
        return []
    if isinstance(hooks, Mapping):
        items = [(t, h, kind) for t, h in hooks.items()]
    else:
        items = []
        for item in hooks:
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise NetslimError(
                    f"A hook must be a (module or name, hook) or (module or name, hook, kind) tuple; got {shown(item)}."
                )
            items.append(item if len(item) == 3 else (*item, kind))
    for target, hook, k in items:
        if k not in KINDS:
            raise unknown_name("hook kind", k, KINDS)
        if not isinstance(target, (nn.Module, str)):
            raise NetslimError(f"A hook's target must be a module or a module's qualified name; got {shown(target)}.")
        if not callable(hook):
            raise NetslimError(
                f"The hook for {shown(target if isinstance(target, str) else type(target).__name__)} "
                f"must be callable; got {shown(hook)}."
            )
    return items


def _register(root: nn.Module | None, target: Target, hook: Callable[..., Any], kind: str):
    if not isinstance(target, str):
        module = target
    else:
        if root is None:
            raise NetslimError(f"Hook target {shown(target)} is a name: pass the model it names a module of.")
        try:
            module = root.get_submodule(target)
        except AttributeError:
            raise NetslimError(
                f"Cannot hook {shown(target)}: {type(root).__name__} has no module of that name."
            ) from None
    kwargs = kind.endswith("_kwargs")
    if kind.startswith("pre"):
        return module.register_forward_pre_hook(hook, with_kwargs=kwargs)
    return module.register_forward_hook(hook, with_kwargs=kwargs)


@contextlib.contextmanager
def hooked(hooks: Hooks | None, *, root: nn.Module | None = None, kind: HookKind = "forward") -> Iterator[None]:
    """``hooks`` registered for the block and removed on exit (also on an exception). Names are
    looked up in ``root``; ``kind`` is the kind of a mapping's hooks and of pairs without one."""
    specs = _specs(hooks, kind)
    handles = []
    try:
        for target, hook, k in specs:
            handles.append(_register(root, target, hook, k))
        yield
    finally:
        for h in handles:
            h.remove()


def _grad_context(grad: Grad) -> contextlib.AbstractContextManager:
    if grad is None:
        return contextlib.nullcontext()
    if grad == "inference":
        return torch.inference_mode()
    return torch.enable_grad() if grad else torch.no_grad()


def _restore(model: nn.Module, saved: list[tuple[nn.Module, bool]]) -> None:
    """Each module in ``saved`` gets its flag back; a module new in ``model`` its parent's."""
    before = {id(m): flag for m, flag in saved}  # ``saved`` holds the modules: their ids stay theirs
    for m, flag in saved:
        m.training = flag
    flags: dict[str, bool] = {}
    for name, m in model.named_modules():
        if id(m) not in before:
            m.training = flags.get(name.rpartition(".")[0], before[id(model)])
        flags[name] = m.training


@contextlib.contextmanager
def eval_mode(
    model: nn.Module,
    hooks: Hooks | None = None,
    *,
    kind: HookKind = "forward",
    training: bool = False,
    grad: Grad = None,
) -> Iterator[nn.Module]:
    """Run the block with ``model`` in eval mode (``training=True``: train mode) and ``hooks``
    registered (see the module docstring; names are looked up in ``model``); on exit the hooks
    are removed and every module's own training flag is restored, also on an exception.

    ``grad``: None leaves autograd as the caller has it, False runs the block under
    ``torch.no_grad()``, True under ``torch.enable_grad()``, "inference" under
    ``torch.inference_mode()``. Yields ``model``.
    """
    if grad not in (None, True, False, "inference") or not isinstance(grad, (bool, str, type(None))):
        raise bad_param("eval_mode", "grad", "None, True, False or 'inference'", grad)
    if not isinstance(training, bool):
        raise bad_param("eval_mode", "training", "a bool (False: eval mode)", training)
    saved = [(m, m.training) for m in model.modules()]
    with contextlib.ExitStack() as stack:
        stack.callback(_restore, model, saved)
        model.train(training)
        stack.enter_context(hooked(hooks, root=model, kind=kind))
        stack.enter_context(_grad_context(grad))
        yield model
