"""A small report document written twice: Markdown (images as PNG files beside it) and self-contained HTML
(images embedded as base64), plus plain-text tables for the terminal."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Report", "format_table"]

Cell = str | int | float | None


def _cell(value: Cell) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(header: list[str], rows: list[list[Cell]]) -> str:
    """Fixed-width text table (for the terminal)."""
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@dataclass
class Report:
    """Blocks in order: ``("heading", level, text)``, ``("text", text)``, ``("table", header, rows)``,
    ``("image", file_name, png_bytes, caption)``, ``("html", html, markdown)`` (a fragment the HTML report
    embeds as is, e.g. an interactive view, and the Markdown text that stands for it)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, header: list[str], rows: list[list[Cell]]) -> None:
        self.blocks.append(("table", header, rows))

    def image(self, file_name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("image", file_name, png, caption))

    def html(self, fragment: str, markdown: str) -> None:
        self.blocks.append(("html", fragment, markdown))

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out += ["#" * block[1] + " " + block[2], ""]
            elif kind == "text":
                out += [block[1], ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "|".join("---" for _ in header) + "|")
                out += ["| " + " | ".join(_cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
                out.append("")
            elif kind == "image":
                out += [f"![{block[3]}]({block[1]})", "", f"*{block[3]}*", ""]
            elif kind == "html":
                out += [block[2], ""]
        return "\n".join(out)

    def to_html(self) -> str:
        esc = html.escape
        out = [
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(self.title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
            "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #bbb;padding:2px 6px;"
            "text-align:right}img{max-width:100%}figcaption{font-style:italic;color:#444}</style>",
            "</head><body>", f"<h1>{esc(self.title)}</h1>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
            elif kind == "text":
                out.append(f"<p>{esc(block[1])}</p>")
            elif kind == "table":
                out.append("<table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in block[1]) + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{esc(_cell(v))}</td>" for v in row) + "</tr>" for row in block[2]]
                out.append("</tbody></table>")
            elif kind == "image":
                data = base64.b64encode(block[2]).decode("ascii")
                out.append(f'<figure><img alt="{esc(block[3])}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{esc(block[3])}</figcaption></figure>")
            elif kind == "html":
                out.append(block[1])
        out.append("</body></html>")
        return "\n".join(out)

    def write(self, directory: str | Path) -> list[Path]:
        """Write ``report.md`` (+ its PNG files) and ``report.html`` into ``directory``; returns the paths."""
        from probattn.io import write_bytes, write_text

        directory = Path(directory)
        written = []
        for block in self.blocks:
            if block[0] == "image":
                written.append(write_bytes(directory / block[1], block[2]))  # atomic, never through a link
        for name, content in (("report.md", self.to_markdown()), ("report.html", self.to_html())):
            written.append(write_text(directory / name, content))
        return written
