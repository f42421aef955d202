"""The torch-free layer under every stage: errors, atomic files, the `Config` dataclass, progress
bars, plot helpers, number formats, run-folder names and owners, and the metrics the trainer
scores val with. Imports nothing else of pneumolib."""
