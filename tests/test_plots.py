import xml.etree.ElementTree as ET

import numpy as np

from recsys.jobs.plots import bar_chart_svg, line_chart_svg


def test_line_chart_is_valid_svg_and_downsamples():
    svg = line_chart_svg(np.linspace(5, 1, 10_000), "loss", "step", "loss")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    path = next(e for e in root.iter() if e.tag.endswith("path"))
    assert path.get("d").count("L") == 399  # 400 points


def test_empty_and_constant_series_do_not_crash():
    ET.fromstring(line_chart_svg([], "loss"))
    ET.fromstring(line_chart_svg([2.0, 2.0], "flat"))


def test_bar_chart_labels_are_escaped():
    svg = bar_chart_svg(["id", "brand<&>"], [0.6, 0.4], "attention")
    root = ET.fromstring(svg)
    texts = [e.text for e in root.iter() if e.tag.endswith("text")]
    assert "brand<&>" in texts and "0.60" in texts
