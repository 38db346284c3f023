"""Subcommands of ``wsm`` that belong to no single package (``weights``, ``up``)."""
