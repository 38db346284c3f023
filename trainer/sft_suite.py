"""SFT suites: the built-in one (generated locally, no download) or records from a path.

The built-in suite mixes tasks with one exact answer a small model can pick up during a short SFT
(arithmetic, reversing, sorting, counting, upper-casing, copying a field out of a record, echoing)
with questions about the Python standard library ("What does json.dumps do?" -> the first line of
its docstring). The docstrings are in the built-in pre-training corpus, so loss on them measures
what pre-training stored, while the synthetic tasks measure how well SFT can shape behaviour.

Everything is a pure function of the seed (and, for docstrings, the Python version): prompts are
deduplicated and held-out prompts never occur in training, so accuracy is measured on unseen items.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import random
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainer.chat import Message
from trainer.sft_data import Conversation, SFTDataError, read_records

# Modules whose public callables become "What does X do?" questions; widely documented, stable.
DOC_MODULES = (
    "json",
    "os.path",
    "math",
    "string",
    "textwrap",
    "itertools",
    "functools",
    "collections",
    "re",
    "shutil",
    "statistics",
    "heapq",
    "bisect",
    "base64",
    "random",
    "operator",
    "fnmatch",
    "glob",
)
LETTERS = string.ascii_lowercase


@dataclass(frozen=True)
class TaskItem:
    """One held-out question scored by exact match of the greedy answer."""

    task: str
    prompt: str
    answer: str


@dataclass
class Suite:
    """Train and held-out conversations plus the held-out task items (single-turn, exact answers)."""

    name: str
    train: list[Conversation]
    valid: list[Conversation]
    tasks: list[TaskItem] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    """Records of the suite's files that were left out, by reason (see :func:`read_records`)."""


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return f"What is {a} + {b}?", str(a + b)


def _reverse(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 5)
    return f"Reverse the letters: {' '.join(w)}", " ".join(reversed(w))


def _sort(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 5)
    return f"Sort the letters: {' '.join(w)}", " ".join(sorted(w))


def _count(rng: random.Random) -> tuple[str, str]:
    target = rng.choice("abc")
    w = "".join(rng.choice("abcd") for _ in range(rng.randint(3, 7)))
    return f"How many times does {target} occur in: {' '.join(w)}?", str(w.count(target))


def _upper(rng: random.Random) -> tuple[str, str]:
    w = _word(rng, 3, 7)
    return f"Write in capitals: {w}", w.upper()


def _field(rng: random.Random) -> tuple[str, str]:
    record = {
        "name": _word(rng, 3, 6).capitalize(),
        "city": _word(rng, 4, 7).capitalize(),
        "age": str(rng.randint(18, 90)),
    }
    key = rng.choice(list(record))
    shown = ", ".join(f"{k}={v}" for k, v in record.items())
    return f"Record: {shown}. What is the {key}?", record[key]


def _echo(rng: random.Random) -> tuple[str, str]:
    w = " ".join(_word(rng, 2, 6) for _ in range(rng.randint(1, 3)))
    return f"Repeat exactly: {w}", w


GENERATORS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _add,
    "reverse": _reverse,
    "sort": _sort,
    "count": _count,
    "upper": _upper,
    "field": _field,
    "echo": _echo,
}


def stdlib_docs(max_len: int = 90) -> list[tuple[str, str]]:
    """``(question, first docstring line)`` for public functions and classes of :data:`DOC_MODULES`."""
    out: list[tuple[str, str]] = []
    for mod_name in DOC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # a trimmed Python build; the suite just gets smaller
            continue
        for name in sorted(vars(mod)):
            obj = vars(mod)[name]
            if name.startswith("_") or not callable(obj) or getattr(obj, "__module__", None) is None:
                continue
            # Only docstrings the object itself defines; inherited ones (object's) say nothing.
            doc = obj.__doc__ if isinstance(obj.__doc__, str) else None
            line = inspect.cleandoc(doc).split("\n", 1)[0].strip() if doc else ""
            if 10 <= len(line) <= max_len and not line.startswith(name + "("):
                out.append((f"What does {mod_name}.{name} do?", line))
    return out


def _conv(prompt: str, answer: str, source: str) -> Conversation:
    return Conversation((Message("user", prompt), Message("assistant", answer)), source)


def builtin_suite(
    seed: int = 0,
    *,
    train_per_task: int = 200,
    valid_per_task: int = 20,
    doc_items: int | None = None,
    multi_turn_fraction: float = 0.1,
) -> Suite:
    """The built-in suite: per synthetic task ``train_per_task`` training and ``valid_per_task`` held-out items.

    Docstring questions (at most ``doc_items``, a seeded sample) are split 80/20; a fraction of training records chains two items as a
    two-turn conversation, so multi-turn masking is exercised by the default suite too.
    """
    rng = random.Random(seed)
    train_items: list[tuple[str, str, str]] = []
    valid_items: list[TaskItem] = []
    for task, gen in GENERATORS.items():
        seen: set[str] = set()
        items: list[tuple[str, str]] = []
        attempts = 0
        need = train_per_task + valid_per_task
        while len(items) < need and attempts < need * 50:
            attempts += 1
            prompt, answer = gen(rng)
            if prompt not in seen:
                seen.add(prompt)
                items.append((prompt, answer))
        valid_items += [TaskItem(task, p, a) for p, a in items[:valid_per_task]]
        train_items += [(task, p, a) for p, a in items[valid_per_task:]]
    docs = stdlib_docs()
    random.Random(seed + 1).shuffle(docs)
    docs = docs[:doc_items] if doc_items is not None else docs
    n_valid_docs = max(1, len(docs) // 5)
    valid_items += [TaskItem("stdlib_doc", p, a) for p, a in docs[:n_valid_docs]]
    train_items += [("stdlib_doc", p, a) for p, a in docs[n_valid_docs:]]
    rng.shuffle(train_items)

    train: list[Conversation] = []
    i = 0
    while i < len(train_items):
        _, p, a = train_items[i]
        if i + 1 < len(train_items) and rng.random() < multi_turn_fraction:
            _, p2, a2 = train_items[i + 1]
            msgs = (
                Message("user", p),
                Message("assistant", a),
                Message("user", p2),
                Message("assistant", a2),
            )
            train.append(Conversation(msgs, f"builtin:train:{i}"))
            i += 2
            continue
        train.append(_conv(p, a, f"builtin:train:{i}"))
        i += 1
    valid = [_conv(t.prompt, t.answer, f"builtin:valid:{j}") for j, t in enumerate(valid_items)]
    return Suite("builtin", train, valid, valid_items)


def _task_items(records: list[Conversation], task: str) -> list[TaskItem]:
    """Held-out single-turn records as exact-match tasks."""
    out = []
    for rec in records:
        roles = [m.role for m in rec.messages]
        if roles == ["user", "assistant"]:
            out.append(TaskItem(task, rec.messages[0].content, rec.messages[1].content))
    return out


def _find(directory: Path, stem: str) -> Path | None:
    for suffix in (".jsonl", ".json"):
        if (directory / f"{stem}{suffix}").is_file():
            return directory / f"{stem}{suffix}"
    return None


def suite_files(path: str | Path) -> list[Path]:
    """The files a path suite reads: ``train`` and ``valid`` of a directory, or the one file."""
    p = Path(path).expanduser()
    if p.is_dir():
        train_file, valid_file = _find(p, "train"), _find(p, "valid")
        if train_file is None or valid_file is None:
            raise SFTDataError(f"{p}: a suite directory needs train.jsonl and valid.jsonl (or .json)")
        return [train_file, valid_file]
    if not p.is_file():
        raise SFTDataError(f"{p}: SFT suite not found (expected builtin, a .json/.jsonl file or a directory)")
    return [p]


def suite_sha256(spec: str) -> str | None:
    """sha256 over the bytes of a path suite's files (None for ``builtin``): an edited suite is a new suite."""
    if spec == "builtin":
        return None
    digest = hashlib.sha256()
    for f in suite_files(spec):
        data = f.read_bytes()
        digest.update(f"{f.name}:{len(data)}:".encode())
        digest.update(data)
    return digest.hexdigest()


def _merge(*counts: dict[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)


def path_suite(path: str | Path, seed: int = 0, valid_fraction: float = 0.1) -> Suite:
    """A suite from files: a directory with ``train.jsonl`` and ``valid.jsonl`` (``.json`` too), or one
    file split by a seeded shuffle into train and held-out (the WSO paper's 9:1 by default).

    Held-out single-turn records double as exact-match task items named after the suite.
    """
    p = Path(path).expanduser()
    files = suite_files(p)
    if len(files) == 2:
        train_recs, valid_recs = read_records(files[0]), read_records(files[1])
        train, valid = train_recs.conversations, valid_recs.conversations
        dropped = _merge(train_recs.dropped, valid_recs.dropped)
    else:
        loaded = read_records(p)
        records, dropped = loaded.conversations, loaded.dropped
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_valid = max(1, round(len(records) * valid_fraction))
        if n_valid >= len(records):
            raise SFTDataError(f"{p}: {len(records)} records are too few to hold some out")
        valid = [records[i] for i in sorted(order[:n_valid])]
        train = [records[i] for i in sorted(order[n_valid:])]
    return Suite(p.stem, train, valid, _task_items(valid, p.stem), dropped)


def load_suite(
    spec: str,
    seed: int = 0,
    *,
    train_per_task: int = 200,
    valid_per_task: int = 20,
    doc_items: int | None = None,
) -> Suite:
    """``builtin`` (sized by the keyword arguments) or a path (see :func:`path_suite`)."""
    if spec == "builtin":
        return builtin_suite(
            seed, train_per_task=train_per_task, valid_per_task=valid_per_task, doc_items=doc_items
        )
    return path_suite(spec, seed)
