"""Class activation maps (notebook 05): the maps, a run's maps over a split, localisation scores,
overlays and the AP-marker shortcut study."""
