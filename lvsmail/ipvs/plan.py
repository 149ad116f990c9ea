"""Plan: the fewest operations that turn the actual table into the desired one.

A pure function of (desired, actual, owned). Only services in ``owned`` are
looked at, so a director never touches virtual services it did not create —
another tool's, or another cluster's on the same machine.

Order: create and edit before delete, so replacing a real server adds the new
one before the old one goes and a service never drops to zero capacity in the
middle of a plan. Within each step entries are sorted, so the plan is stable
and readable in ``--dry-run`` output.
"""

from __future__ import annotations

from collections.abc import Collection

from lvsmail.ipvs.model import (
    AddDest,
    AddService,
    DelDest,
    DelService,
    EditDest,
    EditService,
    Op,
    ServiceKey,
    Table,
)


def plan(desired: Table, actual: Table, owned: Collection[ServiceKey]) -> list[Op]:
    """Operations that make ``actual`` match ``desired`` for the services in ``owned`` ∪ desired."""
    services: list[Op] = []
    add_dests: list[Op] = []
    del_dests: list[Op] = []
    del_services: list[Op] = []
    for key in sorted(desired):
        want = desired[key]
        have = actual.get(key)
        if have is None:
            services.append(AddService(key, want.settings))
            add_dests += [AddDest(key, dk, d.settings) for dk, d in sorted(want.dests.items())]
            continue
        if have.settings != want.settings:
            services.append(EditService(key, want.settings))
        for dk in sorted(want.dests):
            wd = want.dests[dk]
            hd = have.dests.get(dk)
            if hd is None:
                add_dests.append(AddDest(key, dk, wd.settings))
            elif hd.settings != wd.settings:
                add_dests.append(EditDest(key, dk, wd.settings))
        del_dests += [DelDest(key, dk) for dk in sorted(have.dests) if dk not in want.dests]
    for key in sorted(set(owned) - set(desired)):
        if key in actual:
            del_services.append(DelService(key))
    return services + add_dests + del_dests + del_services
