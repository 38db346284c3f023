"""Checkpoint formats behind one seam (:mod:`merger.formats.base`): one module per format."""
