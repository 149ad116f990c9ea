"""The seed's availability model: its printed figures reproduced exactly, and ours computed beside them."""

import json
import textwrap

import pytest

from lvsmail.commands.availability import availability
from lvsmail.config import ConfigError, parse_cluster
from lvsmail.console import availability as model
from lvsmail.console.outages import DIRECTOR_TAKEOVER, REALSERVER_REMOVAL, OutageRecorder, outages_path
from lvsmail.spec import AvailabilityLayerSpec, AvailabilitySpec

SECTION = """\
    availability:
      node_availability: 0.999118607
      mtbf_hours: 8640
      layers:
        directors: {nodes: 2, mode: active-passive}
        realservers: {nodes: 4, mode: all-active}
        storage: {nodes: 6, mode: active-passive, mtfo_seconds: 137.162}
    """
HEAD = """\
    cluster: clustermail
    vips: [192.0.2.33]
    services:
      - {name: smtp, vip: 192.0.2.33, port: 25, realservers: [198.51.100.20]}
    """


def cluster(section: str = SECTION):
    return parse_cluster(textwrap.dedent(HEAD) + textwrap.dedent(section), "c.yaml")


# -- the seed's figures --------------------------------------------------------------

@pytest.mark.parametrize("name", ["directors", "realservers", "storage"])
def test_each_seed_layer_matches_the_printed_figure_to_ten_decimals(name):
    result = {r.input.name: r for r in model.seed().layers}[name]
    assert f"{result.availability:.10f}" == f"{model.SEED_FIGURES[name]:.10f}"


def test_seed_total_is_99_99608_percent_and_20_6_minutes_a_year():
    result = model.seed()
    assert f"{result.availability * 100:.5f}" == "99.99608"
    assert f"{result.downtime_minutes_per_year:.1f}" == "20.6"


def test_storage_needs_the_pair_exponent_not_the_node_count():
    """Documented interpretation: with (1-a)^N for six storage nodes the printed figure is not reached."""
    storage = model.SEED_LAYERS[2]
    down = 1 - storage.node_availability
    literal = 1 - (15 * down ** 6 + 6 * storage.mtfo_seconds / (storage.mtbf_hours * 3600))
    assert f"{literal:.10f}" != f"{model.SEED_FIGURES['storage']:.10f}"
    assert (model.layer(storage).c, model.layer(storage).k) == (15, 2)


def test_all_active_layer_counts_one_failover_and_all_nodes_down():
    r = model.layer(model.LayerInput("rs", 4, "all-active", 0.9, 1.0, 36.0))
    assert (r.c, r.k) == (1, 4)
    assert r.failure == pytest.approx(0.1 ** 4 + 0.01)


def test_active_passive_pair_of_two():
    r = model.layer(model.LayerInput("d", 2, "active-passive", 0.9, 1.0, 36.0))
    assert (r.c, r.k) == (1, 2)
    assert r.failure == pytest.approx(0.01 + 2 * 0.01)


def test_a_single_node_cannot_be_active_passive():
    with pytest.raises(ValueError, match="cannot be active-passive"):
        model.layer(model.LayerInput("d", 1, "active-passive", 0.9, 1.0, 1.0))


# -- our inputs ----------------------------------------------------------------------

def test_section_is_read_and_dumped_back():
    from lvsmail.config import dump_cluster

    spec = cluster()
    assert spec.availability == AvailabilitySpec(0.999118607, 8640.0, (
        AvailabilityLayerSpec("directors", 2, "active-passive"),
        AvailabilityLayerSpec("realservers", 4, "all-active"),
        AvailabilityLayerSpec("storage", 6, "active-passive", mtfo_seconds=137.162)))
    assert parse_cluster(dump_cluster(spec)).availability == spec.availability


def test_section_errors_name_line_and_key():
    with pytest.raises(ConfigError) as caught:
        cluster("""\
            availability:
              node_availability: 99.9
              mtbf_hours: 0
              layers:
                directors: {nodes: 1, mode: active-passive}
                realservers: {nodes: 4, mode: everything}
            """)
    assert str(caught.value).splitlines() == [
        "c.yaml:6: availability.node_availability: must be between 0 and 1 (exclusive), got 99.9 "
        "(write the fraction, not a percentage)",
        "c.yaml:7: availability.mtbf_hours: expected a number greater than 0, got '0'",
        "c.yaml:9: availability.layers.directors.nodes: an active-passive layer needs at least 2 nodes (a pair)",
        "c.yaml:10: availability.layers.realservers.mode: 'everything' is not a layer mode; expected one of "
        "active-passive, all-active (or active-active)",
    ]


def test_seed_inputs_in_the_cluster_file_give_the_seed_figures():
    result = model.evaluate(model.our_inputs(cluster().availability, {}, {"directors": 4.351, "realservers": 0.762}))
    assert [f"{r.availability:.10f}" for r in result.layers] == [f"{v:.10f}" for v in model.SEED_FIGURES.values()]


def test_recorded_median_is_used_and_an_override_wins_saying_so():
    inputs = model.our_inputs(cluster().availability, {"directors": (1.5, 3), "realservers": (0.25, 5)},
                              {"realservers": 0.4})
    by_name = {i.name: i for i in inputs}
    assert (by_name["directors"].mtfo_seconds, by_name["directors"].mtfo_source) == (1.5, "recorded median of 3")
    assert by_name["realservers"].mtfo_seconds == 0.4
    assert by_name["realservers"].mtfo_source == "override (recorded median 0.250 s of 5 not used)"
    assert by_name["storage"].mtfo_source == "cluster file"


def test_missing_failover_time_names_the_layer_and_the_flag():
    with pytest.raises(model.MissingInput, match=r"directors \(nothing recorded yet; pass --mtfo-directors"):
        model.our_inputs(cluster().availability, {}, {"realservers": 1.0})


# -- the command ---------------------------------------------------------------------

def write(tmp_path):
    path = tmp_path / "clustermail.yaml"
    path.write_text(textwrap.dedent(HEAD) + textwrap.dedent(SECTION))
    return path


def test_command_without_file_prints_the_seed(cli_runner):
    result = cli_runner.invoke(availability, [])
    assert result.exit_code == 0
    assert "99.99608 %" in result.stdout and "0.9999618885" in result.stdout
    assert "seed's figures only" in result.stdout


def test_command_uses_recorded_medians(cli_runner, tmp_path):
    path = write(tmp_path)
    rec = OutageRecorder(outages_path(tmp_path, path))
    for seconds in (3.0, 1.0, 2.0):
        rec.record(DIRECTOR_TAKEOVER, seconds, detail="peer 198.51.100.1 silent")
    rec.record(REALSERVER_REMOVAL, 0.5)
    result = cli_runner.invoke(availability, ["-c", str(path), "--state-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ours = {layer["name"]: layer for layer in data["ours"]["layers"]}
    assert ours["directors"]["mtfo_seconds"] == 2.0
    assert ours["directors"]["mtfo_source"] == "recorded median of 3"
    assert ours["realservers"]["mtfo_seconds"] == 0.5
    expected = model.layer(model.LayerInput("directors", 2, "active-passive", 0.999118607, 8640, 2.0))
    assert ours["directors"]["availability"] == expected.availability
    assert data["seed"]["availability"] == model.seed().availability


def test_command_text_shows_overrides_beside_the_seed(cli_runner, tmp_path):
    path = write(tmp_path)
    result = cli_runner.invoke(availability, ["-c", str(path), "--state-dir", str(tmp_path),
                                               "--mtfo-directors", "4.351", "--mtfo-realservers", "0.762"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.stdout.splitlines() if row.startswith("directors"))
    assert "override" in line and line.split()[-2:] == ["0.9999989434", "0.9999989434"]
    total = next(row for row in result.stdout.splitlines() if row.startswith("total"))
    assert total.split()[1:] == ["99.99608", "%", "99.99608", "%"]


def test_command_exits_2_when_nothing_measured_and_no_override(cli_runner, tmp_path):
    path = write(tmp_path)
    result = cli_runner.invoke(availability, ["-c", str(path), "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--mtfo-directors" in result.stderr and result.stdout == ""


def test_command_exits_2_without_a_section(cli_runner, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(HEAD))
    result = cli_runner.invoke(availability, ["-c", str(path)])
    assert result.exit_code == 2 and "no availability: section" in result.stderr
