"""Repository tools, apart from the pipeline: publishing a fork."""
