"""The director stacks ``lvsmail lab up --stack`` can build: lvsmail's own and the anchors it is compared with."""

from __future__ import annotations

import importlib
import importlib.util

from lvsmail.lab.stacks.base import DirectorStack

#: ``--stack`` name -> "module:class", lvsmail's first. A module not in this checkout is not registered
#: (each stack arrives in its own change); one that is here but fails to import is an error, not hidden.
_WHERE = {
    "lvsmail": "lvsmail.lab.stacks.native:LvsmailStack",
    "seed": "lvsmail.lab.stacks.seed:SeedStack",
    "keepalived": "lvsmail.lab.stacks.keepalived:KeepalivedStack",
}


#: The stack ``lab up`` and ``lab chaos`` build when none is named.
DEFAULT = "lvsmail"


def _class(name: str) -> type[DirectorStack]:
    module, cls = _WHERE[name].split(":")
    return getattr(importlib.import_module(module), cls)


def __getattr__(attr: str):
    """``STACKS``: the registered stacks, ``--stack`` name -> DirectorStack class (imported on first use,
    so the command line can offer the names without loading every stack)."""
    if attr == "STACKS":
        return {name: _class(name) for name in names()}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def names() -> tuple[str, ...]:
    """The names ``--stack`` accepts: the registered stacks whose module is in this checkout."""
    return tuple(name for name, where in _WHERE.items() if importlib.util.find_spec(where.split(":")[0]))


def get(name: str) -> DirectorStack:
    """A new instance of the stack called ``name``; ValueError listing the registered names otherwise."""
    if name not in names():
        raise ValueError(f"unknown director stack {name!r}; known: {', '.join(names())}")
    return _class(name)()
