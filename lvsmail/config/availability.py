"""The ``availability:`` section: inputs of the seed deployment's availability model.

Node availability and MTBF are estimates the administrator supplies (vendor
figures, past incidents); failover times come from what the directors measured,
so the section only carries a failover time for layers lvsmail does not watch
(shared storage, for instance).
"""

from __future__ import annotations

import math

from lvsmail.config.fields import Reader, describe, join
from lvsmail.config.keys import names
from lvsmail.config.tree import Node
from lvsmail.spec import AVAILABILITY_MODES, AvailabilityLayerSpec, AvailabilitySpec

SECTION_KEYS = names("availability")
LAYER_KEYS = names("availability.layers.NAME")
#: Other names administrators use for an all-active layer.
MODE_ALIASES = {"active-active": "all-active"}
_LAYER_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def read_availability(r: Reader, node: Node) -> AvailabilitySpec | None:
    """Validate the section; every problem is recorded on ``r``."""
    e = r.mapping(node, "availability", SECTION_KEYS, required=SECTION_KEYS)
    if e is None:
        return None
    before = len(r.problems)
    a = _probability(r, e["node_availability"], "availability.node_availability") if "node_availability" in e else None
    mtbf = _positive(r, e["mtbf_hours"], "availability.mtbf_hours") if "mtbf_hours" in e else None
    layers: list[AvailabilityLayerSpec] = []
    if "layers" in e:
        if not e["layers"].is_mapping or not e["layers"].value:
            r.error(e["layers"], "availability.layers",
                    f"expected a mapping of layer name to {{nodes, mode}}, got {describe(e['layers'])}")
        else:
            for name, entry in e["layers"].value.items():
                layer = _layer(r, name, entry.node, join("availability.layers", name))
                if layer is not None:
                    layers.append(layer)
    if len(r.problems) > before or a is None or mtbf is None:
        return None
    return AvailabilitySpec(node_availability=a, mtbf_hours=mtbf, layers=tuple(layers))


def _layer(r: Reader, name: str, node: Node, path: str) -> AvailabilityLayerSpec | None:
    """One layer: how many nodes, how they share the work, and optional per-layer inputs."""
    before = len(r.problems)
    if not name or set(name) - _LAYER_NAME_CHARS:
        r.error(node, path, f"{name!r} is not a valid layer name (letters, digits, '_', '-')")
    e = r.mapping(node, path, LAYER_KEYS, required=("nodes", "mode"))
    if e is None:
        return None
    nodes = r.integer(e["nodes"], join(path, "nodes"), 1, 10_000) if "nodes" in e else None
    mode = r.choice(e["mode"], join(path, "mode"), AVAILABILITY_MODES, "layer mode", MODE_ALIASES) \
        if "mode" in e else None
    if mode == "active-passive" and nodes is not None and nodes < 2:
        r.error(e["nodes"], join(path, "nodes"), "an active-passive layer needs at least 2 nodes (a pair)")
    a = _probability(r, e["node_availability"], join(path, "node_availability")) \
        if "node_availability" in e else None
    mtbf = _positive(r, e["mtbf_hours"], join(path, "mtbf_hours")) if "mtbf_hours" in e else None
    mtfo = None
    if "mtfo_seconds" in e:
        mtfo = _positive(r, e["mtfo_seconds"], join(path, "mtfo_seconds"))
    if len(r.problems) > before:
        return None
    return AvailabilityLayerSpec(name=name, nodes=nodes, mode=mode, node_availability=a, mtbf_hours=mtbf,
                                 mtfo_seconds=mtfo)


def _probability(r: Reader, node: Node, path: str) -> float | None:
    """A node availability: a fraction strictly between 0 and 1 (0.999118607, not 99.91 %)."""
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        r.error(node, path, f"expected a fraction such as 0.9991, got {describe(node)}")
        return None
    if not 0 < value < 1:
        hint = " (write the fraction, not a percentage)" if 1 < value <= 100 else ""
        r.error(node, path, f"must be between 0 and 1 (exclusive), got {value}{hint}")
        return None
    return float(value)


def _positive(r: Reader, node: Node, path: str) -> float | None:
    """A finite number greater than 0 (hours or seconds)."""
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        r.error(node, path, f"expected a number greater than 0, got {describe(node)}")
        return None
    return float(value)


def dump_availability(spec: AvailabilitySpec) -> dict:
    """The section as an administrator would write it."""
    layers: dict = {}
    for layer in spec.layers:
        d: dict = {"nodes": layer.nodes, "mode": layer.mode}
        for key in ("node_availability", "mtbf_hours", "mtfo_seconds"):
            value = getattr(layer, key)
            if value is not None:
                d[key] = _plain(value)
        layers[layer.name] = d
    return {"node_availability": spec.node_availability, "mtbf_hours": _plain(spec.mtbf_hours), "layers": layers}


def _plain(value: float) -> int | float:
    """8640.0 -> 8640, so the dump reads as typed."""
    return int(value) if float(value).is_integer() else value
