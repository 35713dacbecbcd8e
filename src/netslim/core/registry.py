"""Where core's registries get their entries: *sources*, loaded on the first lookup.

Core keeps the registries - methods (:func:`netslim.core.config.register`), architectures,
module types, loaders and storage forms (:mod:`netslim.core.serialize`), exporters
(:mod:`netslim.core.export`), streamed steps (:mod:`netslim.core.stream_io`) - and imports
nothing above it. What fills them lives above core and registers itself where it lives, at
import; the layer above tells core how to import it by adding sources:

* ``netslim/__init__.py`` adds one source per method family shipped with netslim (each
  imports a package or module, which registers its configs, module types and formats);
* :func:`add_entry_points` adds the ``netslim.plugins`` entry-point group: each entry point
  of an installed distribution (``[project.entry-points."netslim.plugins"]
  my_method = "my_package.netslim_plugin"``) is a source that imports the object it names.

Every lookup (``methods()``, ``save``, ``load``, ``ExportConfig(format=...)``, ...) first calls
:func:`load_sources`, which runs each pending source once, in the order added; ``import
netslim`` alone loads none. A source that raises is reported with one warning line naming it
and skipped - one broken plugin does not break ``netslim.load`` - and is listed by
:func:`failed_sources` (an unknown-name error mentions it: :func:`failure_note`).

A :class:`Registry` is a table of named entries filled that way, by netslim and by users alike
(methods: :func:`netslim.core.config.register`; importance criteria:
:func:`netslim.prune.register_criterion`): a name taken twice is an error naming both owners, an
unknown name one error listing the registered ones.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any, Generic, TypeVar

from .errors import NetslimError, UnknownNameError, clip, unknown_name

log = logging.getLogger(__name__)

PLUGIN_GROUP = "netslim.plugins"

_PENDING: list[tuple[str, Callable[[], Any]]] = []
_FAILED: dict[str, str] = {}
_LOCK = threading.RLock()  # re-entrant: a source's import may look something up (the nested call goes on)
_LOADING = threading.local()


def add_source(name: str, load: Callable[[], Any]) -> None:
    """Run ``load()`` (it imports what registers) before the next lookup; ``name`` names it in reports."""
    with _LOCK:
        _PENDING.append((name, load))


def add_entry_points(group: str = PLUGIN_GROUP) -> None:
    """Each entry point of ``group`` becomes a source (listed on the first lookup, not now):
    loading one imports the module (or object) it names."""

    def expand() -> None:
        seen = set()
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: (e.name, e.value)):
            if (ep.name, ep.value) not in seen:  # a distribution found twice on sys.path
                seen.add((ep.name, ep.value))
                add_source(f"plugin {ep.name!r} ({ep.value})", ep.load)

    add_source(f"entry points of group {group!r}", expand)


def loading() -> bool:
    """True while this thread runs a source (what registers then is netslim's or a plugin's own import)."""
    return getattr(_LOADING, "depth", 0) > 0


def load_sources() -> None:
    """Run the pending sources, each once (see the module docstring); cheap when none is pending."""
    if not _PENDING:
        return
    with _LOCK:
        while _PENDING:
            name, load = _PENDING.pop(0)
            _LOADING.depth = getattr(_LOADING, "depth", 0) + 1
            try:
                load()
            except Exception as e:  # reported and skipped: one broken plugin must not break netslim.load
                _FAILED[name] = clip(f"{type(e).__name__}: {' '.join(str(e).split())}")
                log.warning(
                    "netslim: %s failed to load and is skipped (what it registers is unavailable): %s",
                    name,
                    _FAILED[name],
                )
            finally:
                _LOADING.depth -= 1


def failed_sources() -> dict[str, str]:
    """Sources that raised when loaded: name -> the error, in one line."""
    return dict(_FAILED)


def failure_note() -> str:
    """`` Not loaded: plugin 'x' (...): ImportError: ...`` for an unknown-name message, or ''."""
    if not _FAILED:
        return ""
    return " Not loaded (failed at import): " + "; ".join(f"{k}: {v}" for k, v in _FAILED.items()) + "."


T = TypeVar("T")


def owner_name(obj: Any) -> str:
    """``module.qualname`` of a function or class (what a registry names as an entry's owner)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


class Registry(Generic[T]):
    """Named entries of one ``kind`` ("method", "group criterion", ...), each registered where it
    lives (netslim's modules, a user's module, a plugin), looked up by name.

    :meth:`add` ties a name to an entry and its *owner* (the function that implements it): the same
    owner again replaces the entry (a module imported twice), another owner is a
    :class:`NetslimError` naming both. Outside netslim's own modules the sources are loaded first,
    so a clash with a built-in is caught where the user registers. :meth:`get` loads the sources
    when the name is not there yet; an unknown name is one :class:`UnknownNameError` listing the
    registered names (and the sources that failed to load)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, tuple[T, Any]] = {}

    def add(self, name: str, entry: T, owner: Any, hint: str = "give it another name") -> T:
        """Register ``entry`` as ``name``, implemented by ``owner``; ``hint`` ends the clash message."""
        if not loading() and not owner_name(owner).startswith("netslim."):
            load_sources()
        old = self._entries.get(name)
        if old is not None and old[1] is not owner:
            raise NetslimError(
                f"{self.kind[:1].upper()}{self.kind[1:]} {name!r} is registered twice: by "
                f"{owner_name(old[1])} and by {owner_name(owner)}; {hint}."
            )
        self._entries[name] = (entry, owner)
        return entry

    def get(self, name: Any) -> T:
        """The entry registered as ``name`` (sources loaded first when it is not there yet)."""
        if not isinstance(name, str) or name not in self._entries:
            load_sources()
        if not isinstance(name, str) or name not in self._entries:
            raise UnknownNameError(str(unknown_name(self.kind, name, self._entries)) + failure_note())
        return self._entries[name][0]

    def entries(self) -> dict[str, T]:
        """Every registered name -> its entry, in registration order (sources loaded first)."""
        load_sources()
        return {name: entry for name, (entry, _) in self._entries.items()}
