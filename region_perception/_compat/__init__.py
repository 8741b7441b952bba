"""Old import paths whose module was split in two (#23): each re-exports both halves.

The top floor: package code never imports from here (``tests/test_layers.py`` checks it). The
finder in :mod:`region_perception._aliases` points the old name here.
"""
