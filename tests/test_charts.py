"""Charts as SVG images in markdown: plain functions, no Prefect."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from flor_flows import charts

SVG = "{http://www.w3.org/2000/svg}"


def _decoded(markdown: str) -> ET.Element:
    """The SVG element of the markdown's one data-URL image."""
    (data,) = re.findall(r"!\[[^\]]*\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return ET.fromstring(base64.b64decode(data))


def test_nice_ticks_are_round_and_cover_the_range() -> None:
    assert charts.nice_ticks(0.0, 1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert charts.nice_ticks(0.591, 0.889) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert charts.nice_ticks(3.0, 3.0)[0] <= 3.0 <= charts.nice_ticks(3.0, 3.0)[-1]
    assert charts.nice_ticks(0, 7, 6) == [0, 2, 4, 6, 8]


def test_series_leave_out_missing_values_and_thin_long_lines() -> None:
    frame = pd.DataFrame({"epoch": [0, 1, 2, 3], "loss": [1.0, None, "n/a", 0.25]})
    series = charts.series_of(frame, "epoch", "loss", "loss")
    assert series == charts.Series("loss", (0.0, 3.0), (1.0, 0.25))
    assert charts.series_of(frame.assign(loss=None), "epoch", "loss", "loss") is None

    long = pd.DataFrame({"x": range(10_000), "y": range(10_000)})
    thinned = charts.series_of(long, "x", "y", "y")
    assert len(thinned.xs) == charts.MAX_POINTS
    assert (thinned.xs[0], thinned.xs[-1]) == (0, 9_999)  # the ends are kept


def test_a_chart_has_a_panel_per_group_and_a_line_per_run() -> None:
    frame = pd.DataFrame(
        {
            "epoch": [0, 1, 2, 0, 1, 2],
            "run": ["a1", "a1", "a1", "b2", "b2", "b2"],
            "acc": [0.5, 0.7, 0.9, 0.6, 0.8, 0.95],
            "loss": [2.0, 1.0, 0.5, 1.8, 0.9, 0.4],
        }
    )
    panels = charts.panels_by_column(frame, "epoch", {"acc": ["acc"], "loss": ["loss"]}, by="run")
    assert [p.title for p in panels] == ["acc", "loss"]
    assert [s.label for s in panels[0].series] == ["a1", "b2"]
    assert panels[1].series[1].ys == (1.8, 0.9, 0.4)

    markdown = charts.markdown("Runs <a> & <b>", panels, "a caption")
    assert markdown.startswith("# Runs <a> & <b>\n") and markdown.endswith("a caption\n")
    svg = _decoded(markdown)  # well-formed XML: titles and labels are escaped
    assert len(svg.findall(f"{SVG}polyline")) == 4  # 2 panels x 2 runs
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert {"acc", "loss", "a1", "b2", "epoch"} <= set(texts)
    assert int(svg.get("width")) == 2 * charts.PANEL_WIDTH


def test_text_ticks_label_the_points_and_long_legends_are_counted() -> None:
    lines = tuple(charts.Series(f"run{i}", (0.0, 1.0), (i, i + 1.0)) for i in range(11))
    panel = charts.Panel("loss", lines, "run", x_ticks=("ab12cd", "ef34gh"))
    svg = ET.fromstring(charts.svg([panel]))
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "ab12cd" in texts and "ef34gh" in texts
    assert "run7" in texts and "run8" not in texts and "and 3 more" in texts
    assert int(svg.get("width")) == charts.PANEL_WIDTH


def test_a_chart_needs_a_panel() -> None:
    with pytest.raises(ValueError, match="at least one panel"):
        charts.svg([])
