"""The shared layer under every stage: augmentation, loader, models, tasks, the inference
runtime, run folders on disk, progress bars and plotting basics. Nothing runs at import.
"""
