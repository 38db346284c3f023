"""Shared pieces of wsm: settings, the checkpoint store, logging and the ``wsm`` command."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wsm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
