"""Rebuild options, progress output and the ``rebuild`` command's argument errors (no I/O)."""

from __future__ import annotations

import io
from uuid import uuid4

import pytest

from eventplatform.cli.main import build_parser, main
from eventplatform.errors import ConfigurationError
from eventplatform.rebuild import RebuildOptions, RebuildReport, shadow_table
from eventplatform.rebuild.progress import StreamProgress
from eventplatform.rebuild.verify import Comparison
from projections import ProductViewProjection


def test_nonsensical_options_are_refused_naming_each_problem():
    with pytest.raises(ConfigurationError) as excinfo:
        RebuildOptions(log="products", batch_size=0, from_position=-1)
    assert "batch_size must be within 1..1000000, got 0" in str(excinfo.value)
    assert "from_position must be >= 0, got -1" in str(excinfo.value)
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        RebuildOptions(log="products", aggregate=uuid4(), from_position=3)


def test_the_shadow_of_a_projection_is_its_table_with_a_suffix():
    assert shadow_table(ProductViewProjection()) == "product_view__rebuild"
    assert shadow_table(ProductViewProjection(table="pv2")) == "pv2__rebuild"


def test_a_copy_for_a_shadow_table_replays_and_leaves_the_original_alone():
    live = ProductViewProjection()
    shadow = live.for_table("product_view__rebuild")
    assert (shadow.table, shadow.replaying) == ("product_view__rebuild", True)
    assert (live.table, live.replaying) == ("product_view", False)


def test_a_terminal_gets_a_redrawn_bar_with_events_and_their_rate():
    out = io.StringIO()
    clock = iter([0.0, 2.0, 4.0])
    progress = StreamProgress(out, bar=True, clock=lambda: next(clock))
    progress.update(phase="replay", position=50, start=0, target=100, events=1000)
    progress.update(phase="replay", position=100, start=0, target=100, events=2000)
    progress.close()
    text = out.getvalue()
    frames = [f for f in text.split("\r") if f.strip()]
    halfway = next(f for f in frames if "replay:  50%" in f)
    assert "50/100" in halfway
    assert "1000 events, 500 events/s" in halfway
    assert "replay: 100%" in frames[-1]
    assert "2000 events" in frames[-1]
    assert text.endswith("\n")


def test_a_pipe_gets_plain_lines_at_most_every_interval_and_the_last_one():
    out = io.StringIO()
    clock = iter([0.0, 1.0, 2.0, 3.0])
    progress = StreamProgress(out, bar=False, interval=5.0, clock=lambda: next(clock))
    for position in (10, 20, 30):
        progress.update(phase="replay", position=position, start=0, target=30, events=position)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("replay: position 10/30")
    assert lines[1].startswith("replay: position 30/30 (100.0%)")
    assert "\r" not in out.getvalue()


def test_a_report_names_unexpected_differences_and_that_nothing_was_swapped():
    report = RebuildReport(
        "product_view",
        "product_view",
        "product_view__rebuild",
        position=7,
        comparison=Comparison(2, 2, "a", "b", ["id=1 (changed)"], 1),
        serving_version=1,
    )
    assert not report.ok
    text = "\n".join(report.lines())
    assert "1 rows differ, UNEXPECTED" in text
    assert "id=1 (changed)" in text
    assert "not swapped: product_view keeps serving" in text


def test_help_lists_rebuild_with_its_options(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rebuild", "--help"])
    out = capsys.readouterr().out
    for option in ("--verify-only", "--aggregate", "--from", "--accept", "--restart"):
        assert option in out


def test_an_aggregate_that_is_not_a_uuid_is_named(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    args = [
        "rebuild",
        "projections:ProductViewProjection",
        "--log",
        "products",
        "--aggregate",
        "abc",
    ]
    assert main(args) == 2
    assert "--aggregate must be an aggregate id (a UUID), got 'abc'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [["--from", "-1"], ["--from", "x"], ["--batch-size", "0"], ["--aggregate", "a", "--from", "1"]],
)
def test_bad_positions_batch_sizes_and_combinations_are_refused(capsys, args):
    with pytest.raises(SystemExit) as excinfo:
        build_parser().parse_args(["rebuild", "projections:ProductViewProjection", *args])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert args[0] in err


def test_a_rebuild_reference_that_is_not_a_projection_is_named(monkeypatch, capsys):
    monkeypatch.setenv("APP_DSN", "postgresql://u@127.0.0.1/db")
    assert main(["rebuild", "projections:ProductViews"]) == 2
    assert "is not a Projection" in capsys.readouterr().err


def test_a_stored_event_that_is_not_json_is_named_by_its_position():
    from eventplatform.errors import DecodeError
    from eventplatform.rebuild.replay import StoredEventDecoder, StoredRow

    decoder = StoredEventDecoder([], log="products")
    with pytest.raises(DecodeError, match=r"products:7 .*not a JSON object"):
        decoder.decode(StoredRow(7, uuid4(), 1, "some:Topic", b"\x00encrypted"))
    envelope = decoder.decode(StoredRow(8, uuid4(), 2, "some:Topic", b'{"a": 1}'))
    assert (envelope.type, envelope.sequence, envelope.data) == ("some:Topic", 8, {"a": 1})
