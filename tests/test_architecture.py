"""The import rules of docs/ARCHITECTURE.md, checked over the source tree (lazy imports included).

theory ← wsm base (settings, store, logs) ← merger ← anneal ← api, and the shell (``wsm.cli``,
``wsm.commands``, ``wsm.supervisor``) on top of everything. The trainer sits beside merger on the
base. Celery and kombu are imported only by the broker adapter, ``anneal.broker``, which is also the
one place that wires the trainer's evaluator into the use case.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("theory", "wsm", "merger", "trainer", "anneal", "api")
SHELL = ("wsm.cli", "wsm.commands", "wsm.supervisor")
BROKER_LIBS = ("celery", "kombu")

# layer -> the layers it may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "theory": {"theory"},
    "base": {"theory", "base"},
    "merger": {"theory", "base", "merger"},
    "trainer": {"theory", "base", "merger", "trainer"},
    "anneal": {"theory", "base", "merger", "anneal"},
    "broker": {"theory", "base", "merger", "trainer", "anneal", "broker"},
    "api": {"theory", "base", "anneal", "api"},
    "shell": {"theory", "base", "merger", "trainer", "anneal", "broker", "api", "shell"},
}


def layer(module: str) -> str | None:
    """The layer of a first-party module, None for third-party and stdlib modules."""
    top = module.split(".")[0]
    if top not in PACKAGES:
        return None
    if module.startswith(SHELL) or module in ("wsm.__main__",):
        return "shell"
    if top == "wsm":
        return "base"
    if module == "anneal.broker" or module.startswith("anneal.broker."):
        return "broker"
    return top


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """Every imported module of a file, with its line, at any depth (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from anneal import broker` imports the submodule anneal.broker
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def violations() -> list[str]:
    out = []
    for path in sources():
        me = module_name(path)
        mine = layer(me)
        assert mine is not None
        for line, target in imports(path):
            top = target.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top in BROKER_LIBS and mine not in ("broker", "shell"):
                out.append(f"{where}: {me} ({mine}) imports {target}; only anneal.broker may")
                continue
            theirs = layer(target)
            if theirs is None or target.split(".")[0] not in PACKAGES:
                continue
            if theirs not in ALLOWED[mine]:
                out.append(f"{where}: {me} ({mine}) imports {target} ({theirs})")
    return out


def test_every_package_is_checked() -> None:
    assert len(sources()) > 50
    assert {layer(module_name(p)) for p in sources()} == set(ALLOWED)


def test_imports_flow_one_way() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("module", "target", "allowed"),
    [
        ("api.routes.anneal", "merger.engine", False),
        ("api.app", "anneal.broker.enqueue", False),
        ("anneal.runner", "trainer.evaluate", False),
        ("anneal.broker.tasks", "trainer.evaluate", True),
        ("wsm.store.store", "merger.plan", False),
        ("theory.curves", "wsm.settings", False),
        ("merger.plan", "anneal.jobs", False),
        ("wsm.commands.serve", "api.app", True),
    ],
)
def test_the_rules_themselves(module: str, target: str, allowed: bool) -> None:
    """The checker would catch an upward import (guards against a rule table that allows everything)."""
    mine, theirs = layer(module), layer(target)
    assert mine is not None and theirs is not None
    assert (theirs in ALLOWED[mine]) is allowed
