"""Report writer and figures: Markdown/HTML content, PNG files that are real images."""

import base64

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from probattn.report import figures
from probattn.report.writer import Report, format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _layers(heads=3, n=2, seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for _ in range(n):
        sim = rng.uniform(0, 1, (heads, heads))
        layers.append({
            "explained_away_0.1": rng.uniform(0, 1, heads).tolist(),
            "attention_similarity": ((sim + sim.T) / 2).tolist(),
            "incoming_mass_histogram": {"log10_range": [-4, 2.5], "counts": rng.integers(0, 9, 20).tolist()},
        })
    return layers


def test_figures_are_png():
    runs = [("a", _layers()), ("b", _layers(seed=1))]
    maps = [[np.eye(4) / 1.0] * 2, [np.full((4, 4), 0.25)] * 2]
    for png in (figures.explained_away_grid(runs), figures.mass_histograms(runs),
                figures.similarity_heatmaps(runs), figures.example_maps(runs, maps, [["a", "b", "c", "d"]] * 2)):
        assert png[:8] == PNG_MAGIC and len(png) > 5_000
    assert figures.similarity_heatmaps(runs, key="output_cka") is None


def test_report_markdown_and_html(tmp_path):
    png = figures.mass_histograms([("a", _layers())])
    report = Report("title <x>")
    report.heading("Section")
    report.text("a | b & c")
    report.table(["name", "value"], [["x|y", 0.123456], ["z", None]])
    report.image("fig.png", png, "a figure")
    written = report.write(tmp_path)
    assert {p.name for p in written} == {"fig.png", "report.md", "report.html"}
    md = (tmp_path / "report.md").read_text()
    assert "| x\\|y | 0.1235 |" in md and "| z | n/a |" in md and "![a figure](fig.png)" in md
    html = (tmp_path / "report.html").read_text()
    assert "title &lt;x&gt;" in html and "a | b &amp; c" in html
    assert base64.b64encode(png).decode() in html
    assert (tmp_path / "fig.png").read_bytes() == png


def test_format_table():
    text = format_table(["a", "bb"], [[1, 2.5], [None, "x"]])
    assert text.splitlines() == ["a    bb ", "---  ---", "1    2.5", "n/a  x  "]
