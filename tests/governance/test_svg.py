"""Every chart is well-formed SVG (a browser shows nothing for a malformed one)."""

from __future__ import annotations

import base64
import xml.dom.minidom

from finrec.governance import svg


def test_charts_are_well_formed_xml():
    charts = [
        svg.bar_chart(["a <b>", "c & d"], [0.5, float("nan")], "bars & <title>"),
        svg.line_chart({"loss": [3.0, 2.0, 1.5], "val": [None, 1.0, float("inf")]}, "lines", "epoch"),
        svg.line_chart({"flat": [1.0, 1.0]}, "flat"),
        svg.line_chart({"empty": []}, "empty"),
        svg.histogram([1, 5, 2], ["0", "1", "2"], "hist"),
    ]
    for chart in charts:
        document = xml.dom.minidom.parseString(chart)
        assert document.documentElement.tagName == "svg"
        assert base64.b64decode(svg.data_uri(chart).split(",", 1)[1]).decode() == chart
