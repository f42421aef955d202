"""How hard the demo's phantoms are (`data.synth`): a `Realism`, each knob one reason the real
task is hard, and the named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Realism:
    """How hard the phantoms are; each knob is one reason the real task is hard."""

    faint: float = 0.0  # share of positives whose opacities are faint (25-50% of the density)
    small: float = 0.0  # share of positives with one small opacity instead of one or two
    mimics: float = 0.0  # share of negatives with an opacity-like finding (band or overlap)
    missed: float = 0.0  # label noise: share of drawn opacities that the label calls negative
    overcalled: float = 0.0  # label noise: share of negatives labelled positive (half on mimics)
    portable: float = 0.0  # 0-1: how much AP films lose contrast and gain noise (portable)
    mottle: float = 0.0  # std of coarse noise at 256 px, grey levels (survives downsizing)
    line_on_positives: float = 1.0  # share of positives with a tube/wire line (negatives: 57%)
    shortcut: bool = False  # a "PORTABLE" marker on positive and some negative AP films


REALISM = {
    "easy": Realism(),  # every positive carries a line here: a cue the easy set leaks
    # Label noise: 12% of opacities missed and 4% of negatives over-called keep prevalence at
    # ~22%; a reader who sees every opacity agrees with these labels at kappa ~0.83 (readers of
    # chest films agree "fair to good", kappa 0.4-0.75, so this is on the kind side).
    "rsna": Realism(
        faint=0.3,
        small=0.25,
        mimics=0.3,
        missed=0.12,
        overcalled=0.04,
        portable=1.0,
        mottle=8.0,
        line_on_positives=0.5,  # as on the negatives: a line is no sign of pneumonia
    ),
}


def as_realism(realism: str | Realism, shortcut: bool | None = None) -> Realism:
    """A preset name or a `Realism` -> `Realism` (with `shortcut` set when given)."""
    if isinstance(realism, str):
        if realism not in REALISM:
            raise ValueError(f"unknown realism {realism!r}: choose one of {sorted(REALISM)}")
        realism = REALISM[realism]
    return realism if shortcut is None else dataclasses.replace(realism, shortcut=shortcut)
