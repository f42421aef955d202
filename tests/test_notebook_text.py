"""The notebooks' prose types no figures and tells no history: a number a reader sees comes from
a cell that prints it (or from `results/`), and the markdown says what to look for and why.

A typed figure is a decimal below one ("0.85"), a "±", or an interval ("[0.61, 0.92]"). The few
that stay are fixed policy constants or published references, each listed in ALLOWED with the
reason it may be typed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
FIGURE = re.compile(r"(?<![\w.])0\.\d+|±|\[\s*-?\d*\.\d+\s*,\s*-?\d*\.\d+\s*\]")
HISTORY = re.compile(  # a phrase may wrap onto the next line
    r"\bstop\s+\d+|\bissue\s+\d+|closing\s+note|earlier\s+build|this\s+build|measured\s+again"
    r"|re-measured",
    re.IGNORECASE,
)
MAX_FIGURES = 10  # in the markdown of all notebooks together
ALLOWED = {  # figure -> why it may be typed
    "0.40": "the challenge's definition: its lowest IoU threshold (evaluate.boxes.THRESHOLDS)",
    "0.45": "the challenge's definition: its second IoU threshold (the step of 0.05)",
    "0.75": "the challenge's definition: its highest IoU threshold",
    "0.5": "policy: the fixed decision threshold (cam_run's true positives, the 0.5 column)",
    "0.8458": "published reference: the course checkpoint's val AUC",
    "0.700": "published reference: the course checkpoint's val accuracy",
    "0.8405": "published reference: the tuned blog's val AUC",
    "0.7025": "published reference: the tuned blog's val accuracy",
}


def typed_figures(text: str) -> list[str]:
    """The typed figures of a text, in order."""
    return FIGURE.findall(text)


def markdown_cells(nb: Path) -> list[tuple[str, str]]:
    """(where, source) of each markdown cell of a notebook's jupytext twin; `where` names the
    notebook, the cell's number and its first line."""
    import jupytext

    out = []
    for i, cell in enumerate(jupytext.read(nb).cells):
        if cell.cell_type == "markdown":
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            out.append((f"{nb.stem} cell {i} ({first[:50]})", cell.source))
    return out


def _found(pattern: re.Pattern) -> list[tuple[str, str]]:
    return [
        (where, m)
        for nb in NOTEBOOKS
        for where, source in markdown_cells(nb)
        for m in pattern.findall(source)
    ]


def _listing(found: list[tuple[str, str]]) -> str:
    return "\n".join(f"  {where}: {figure!r}" for where, figure in found)


def test_the_pattern_finds_decimals_plus_minus_and_intervals():
    text = "AUC 0.85 ± 0.04 [0.61, 0.92], at 224 px, 1e-4, v0.5, 3.0 and 10.25; [-.5, 0.5]"
    assert typed_figures(text) == ["0.85", "±", "0.04", "[0.61, 0.92]", "[-.5, 0.5]"]
    assert not HISTORY.search("Notebook 03 trains; stop at 5 epochs")
    assert HISTORY.search("the figures measured again on this build")
    assert HISTORY.search("the figures measured\nagain")  # wrapped


def test_every_typed_figure_is_an_allowed_constant_or_reference():
    bad = [(where, f) for where, f in _found(FIGURE) if f not in ALLOWED]
    assert not bad, (
        f"{len(bad)} typed figures in notebook markdown; print them from a cell (or read "
        f"them from results/) instead, or add a fixed constant to ALLOWED:\n{_listing(bad)}"
    )


def test_at_most_a_few_typed_figures_in_all():
    found = _found(FIGURE)
    assert len(found) <= MAX_FIGURES, (
        f"{len(found)} typed figures in notebook markdown (at most {MAX_FIGURES}):\n"
        f"{_listing(found)}"
    )


def test_no_development_history_in_the_markdown():
    found = _found(HISTORY)
    assert not found, f"development history in notebook markdown:\n{_listing(found)}"
