"""Getting and caching the data (notebooks 00-01): labels, DICOMs, the demo phantoms, the cache.

No torch here: every module imports without it.
"""
