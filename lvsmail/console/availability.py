"""The availability model of the seed deployment, and our figures beside its own.

Per layer the seed computes the probability of being down,
``F = c·(1−a)^k + (failover term)``, and the availability ``D = 1 − F``; the
cluster's availability is the product of its layers'.

* **all-active** (every node serves; the seed's four real servers): the layer
  is down only when all ``N`` nodes are, ``c = 1``, ``k = N``, and each failure
  costs its clients one failover: ``F = (1−a)^N + MTFO/MTBF``.
* **active-passive** (pairs: the directors, DRBD-mirrored storage): ``c =
  N(N−1)/2`` counts the pairs of nodes that can be down together and ``k = 2``,
  the two nodes of a pair; every node's failure causes a takeover:
  ``F = N(N−1)/2·(1−a)² + N·MTFO/MTBF``.

SEEDS.md summarises the exponent as ``n``.  Its printed figures fix what ``n``
means for pairs: with the exponent equal to the layer's node count, the
six-node storage layer (MDS/MGS and two OSS, each mirrored) would come to
0.9999735 instead of the printed 0.9999618885; with the pair's two nodes as
the exponent and ``c`` and the failover term over all six nodes, every printed
figure is reproduced to its last digit.  For the two directors both readings
agree.  ``a`` is a node's availability, MTBF its mean time between failures
and MTFO the mean time a failover interrupts service (both in seconds here).
"""

from __future__ import annotations

from dataclasses import dataclass

from lvsmail.spec import AvailabilitySpec

SECONDS_PER_HOUR = 3600.0
MINUTES_PER_YEAR = 365 * 24 * 60


@dataclass(frozen=True)
class LayerInput:
    """Everything one layer's figure depends on, and where the failover time came from."""

    name: str
    nodes: int
    mode: str  # "active-passive" | "all-active"
    node_availability: float
    mtbf_hours: float
    mtfo_seconds: float
    mtfo_source: str = ""


@dataclass(frozen=True)
class LayerResult:
    """One layer evaluated: the pair-count factor c, the exponent k, F and D = 1 − F."""

    input: LayerInput
    c: int
    k: int
    failure: float
    availability: float


@dataclass(frozen=True)
class Result:
    """Every layer and the whole cluster (the product of the layers)."""

    layers: tuple[LayerResult, ...]
    availability: float

    @property
    def downtime_minutes_per_year(self) -> float:
        """Expected minutes of downtime in a 365-day year."""
        return (1.0 - self.availability) * MINUTES_PER_YEAR


def layer(inp: LayerInput) -> LayerResult:
    """Evaluate one layer with the seed's formula (see the module docstring for c and k)."""
    if inp.nodes < 1 or (inp.mode == "active-passive" and inp.nodes < 2):
        raise ValueError(f"layer {inp.name}: {inp.nodes} nodes cannot be {inp.mode}")
    if not 0 < inp.node_availability < 1 or inp.mtbf_hours <= 0 or inp.mtfo_seconds < 0:
        raise ValueError(f"layer {inp.name}: node availability must be in (0, 1), MTBF > 0 and MTFO >= 0")
    down = 1.0 - inp.node_availability
    failover = inp.mtfo_seconds / (inp.mtbf_hours * SECONDS_PER_HOUR)
    if inp.mode == "all-active":
        c, k = 1, inp.nodes
        f = down ** k + failover
    elif inp.mode == "active-passive":
        c, k = inp.nodes * (inp.nodes - 1) // 2, 2
        f = c * down ** k + inp.nodes * failover
    else:
        raise ValueError(f"layer {inp.name}: unknown mode {inp.mode!r}")
    return LayerResult(inp, c, k, f, 1.0 - f)


def evaluate(layers: list[LayerInput] | tuple[LayerInput, ...]) -> Result:
    """All layers and their product."""
    results = tuple(layer(inp) for inp in layers)
    total = 1.0
    for r in results:
        total *= r.availability
    return Result(results, total)


# -- the seed's own inputs and printed figures (SEEDS.md, deployment 1) ------------------

SEED_NODE_AVAILABILITY = 0.999118607
SEED_MTBF_HOURS = 8640.0
#: Measured failovers (8 runs each, averaged): heartbeat takeover, a client reconnect, Lustre after DRBD.
SEED_LAYERS = (
    LayerInput("directors", 2, "active-passive", SEED_NODE_AVAILABILITY, SEED_MTBF_HOURS, 4.351, "seed"),
    LayerInput("realservers", 4, "all-active", SEED_NODE_AVAILABILITY, SEED_MTBF_HOURS, 0.762, "seed"),
    LayerInput("storage", 6, "active-passive", SEED_NODE_AVAILABILITY, SEED_MTBF_HOURS, 137.162, "seed"),
)
#: The figures the seed printed: per layer to 10 decimals, the total as a percentage to 5.
SEED_FIGURES = {"directors": 0.9999989434, "realservers": 0.9999999755, "storage": 0.9999618885}
SEED_TOTAL_PERCENT = 99.99608


def seed() -> Result:
    """The seed's model with the seed's inputs."""
    return evaluate(SEED_LAYERS)


# -- our inputs ----------------------------------------------------------------------------

#: Which recorded outage kind measures which layer's failover.
MEASURED_LAYERS = {"directors": "director_takeover", "realservers": "realserver_removal"}


class MissingInput(ValueError):
    """A layer has no failover time: nothing recorded, no override, none in the cluster file."""


def our_inputs(spec: AvailabilitySpec, medians: dict[str, tuple[float, int]],
               overrides: dict[str, float]) -> list[LayerInput]:
    """The cluster file's layers with a failover time each, and a word on where it came from.

    Precedence: an explicit override, then the median the directors recorded
    (``medians``: layer → (median seconds, number of records)), then the file's
    ``mtfo_seconds``. A layer with none of them raises MissingInput naming it.
    """
    inputs, missing = [], []
    for ls in spec.layers:
        recorded = medians.get(ls.name)
        if ls.name in overrides:
            mtfo = overrides[ls.name]
            source = "override"
            if recorded:
                source += f" (recorded median {recorded[0]:.3f} s of {recorded[1]} not used)"
        elif recorded:
            mtfo, count = recorded
            source = f"recorded median of {count}"
        elif ls.mtfo_seconds is not None:
            mtfo, source = ls.mtfo_seconds, "cluster file"
        else:
            missing.append(ls.name)
            continue
        inputs.append(LayerInput(
            ls.name, ls.nodes, ls.mode,
            ls.node_availability if ls.node_availability is not None else spec.node_availability,
            ls.mtbf_hours if ls.mtbf_hours is not None else spec.mtbf_hours,
            mtfo, source))
    if missing:
        hints = []
        for name in missing:
            flag = f"--mtfo-{name}" if name in MEASURED_LAYERS else None
            hints.append(f"{name} (nothing recorded yet; pass {flag} SECONDS or set mtfo_seconds)" if flag
                         else f"{name} (lvsmail does not measure it; set availability.layers.{name}.mtfo_seconds)")
        raise MissingInput("no failover time for " + "; ".join(hints))
    return inputs


def as_json(result: Result) -> dict:
    """Machine-readable figures (availability as a fraction, downtime in minutes per year)."""
    return {
        "layers": [{
            "name": r.input.name, "nodes": r.input.nodes, "mode": r.input.mode,
            "node_availability": r.input.node_availability, "mtbf_hours": r.input.mtbf_hours,
            "mtfo_seconds": r.input.mtfo_seconds, "mtfo_source": r.input.mtfo_source,
            "c": r.c, "k": r.k, "failure": r.failure, "availability": r.availability,
        } for r in result.layers],
        "availability": result.availability,
        "downtime_minutes_per_year": result.downtime_minutes_per_year,
    }


def as_text(ours: Result | None, theirs: Result, note: str = "") -> str:
    """A table of our layers beside the seed's, then both totals."""
    seed_by_name = {r.input.name: r for r in theirs.layers}
    rows = [("layer", "nodes", "mode", "a", "MTBF h", "MTFO s", "MTFO from", "availability", "seed")]
    for r in (ours.layers if ours else ()):
        i = r.input
        s = seed_by_name.get(i.name)
        rows.append((i.name, str(i.nodes), i.mode, f"{i.node_availability:.9g}", f"{i.mtbf_hours:g}",
                     f"{i.mtfo_seconds:.3f}", i.mtfo_source, f"{r.availability:.10f}",
                     f"{s.availability:.10f}" if s else "-"))
    if ours is None:
        for s in theirs.layers:
            i = s.input
            rows.append((i.name, str(i.nodes), i.mode, f"{i.node_availability:.9g}", f"{i.mtbf_hours:g}",
                         f"{i.mtfo_seconds:.3f}", "seed", "-", f"{s.availability:.10f}"))
    rows.append(("total", "", "", "", "", "", "", f"{ours.availability * 100:.5f} %" if ours else "-",
                 f"{theirs.availability * 100:.5f} %"))
    rows.append(("downtime/year", "", "", "", "", "", "",
                 f"{ours.downtime_minutes_per_year:.1f} min" if ours else "-",
                 f"{theirs.downtime_minutes_per_year:.1f} min"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    head = ["Availability per layer: D = 1 − F, the cluster's is the product of its layers'",
            "  all-active:     F = (1−a)^N + MTFO/MTBF",
            "  active-passive: F = N(N−1)/2·(1−a)² + N·MTFO/MTBF", ""]
    return "\n".join([*head, *lines] + ([note] if note else [])) + "\n"
