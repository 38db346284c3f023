"""The built-in lm-eval task pack: lm-evaluation-harness task YAML over local JSONL, generated here.

Four tasks on the built-in SFT suite's skills, small enough that a tiny pre-trained model moves on
them and needing no download:

* ``wsm_copy`` (generation, exact match): repeat a few made-up words;
* ``wsm_add`` (generation, exact match): add two numbers below 50;
* ``wsm_count`` (multiple choice over 0-7, acc/acc_norm): count a letter in a short string;
* ``wsm_stdlib_doc`` (multiple choice, 4 options): pick the first docstring line of a standard-library
  function; the docstrings are in the built-in pre-training corpus, so this one measures what
  pre-training stored.

All four carry the tag ``wsm_pack``. The items are a pure function of the seed and the item count
(and, for docstrings, the Python version). :func:`materialise` writes the pack once into a cache
directory named by its content hash, which also enters the evaluation's cache key; the YAML files
name their JSONL by absolute path, which the hash leaves out, so the key is the same on every machine.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from trainer.sft_suite import LETTERS, stdlib_docs

PACK_TAG = "wsm_pack"
# Bump when the generators or the YAML change: the hash changes anyway, this just says why.
PACK_VERSION = 1
PROMPT = "Question: {{question}}\nAnswer:"
DATA_FILE = "{task}.jsonl"


def _words(rng: random.Random) -> str:
    return " ".join(
        "".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(1, 3))
    )


def _copy(rng: random.Random) -> dict[str, Any]:
    w = _words(rng)
    return {"question": f"Repeat exactly: {w}", "answer": w}


def _add(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(0, 49), rng.randint(0, 49)
    return {"question": f"What is {a} + {b}?", "answer": str(a + b)}


COUNT_CHOICES = [str(i) for i in range(8)]


def _count(rng: random.Random) -> dict[str, Any]:
    target = rng.choice("abc")
    w = "".join(rng.choice("abcd") for _ in range(rng.randint(3, 7)))
    return {
        "question": f"How many times does {target} occur in: {' '.join(w)}?",
        "choices": COUNT_CHOICES,
        "label": w.count(target),
    }


def _unique(gen: Any, rng: random.Random, n: int) -> list[dict[str, Any]]:
    """``n`` items with distinct questions (fewer if the generator runs out)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for _ in range(n * 50):
        if len(out) == n:
            break
        item = gen(rng)
        if item["question"] not in seen:
            seen.add(item["question"])
            out.append(item)
    return out


def _stdlib_doc(rng: random.Random, n: int) -> list[dict[str, Any]]:
    docs = stdlib_docs()
    rng.shuffle(docs)
    lines = sorted({line for _, line in docs})
    out = []
    for question, line in docs[:n]:
        wrong = rng.sample([x for x in lines if x != line], 3)
        choices = [line, *wrong]
        rng.shuffle(choices)
        out.append({"question": question, "choices": choices, "label": choices.index(line)})
    return out


def _generation(task: str) -> dict[str, Any]:
    return {
        "task": task,
        "output_type": "generate_until",
        "doc_to_target": "answer",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 24, "do_sample": False},
        # The continuation after "Answer:" starts with a space; compare what the model wrote.
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "regexes_to_ignore": ["^\\s+", "\\s+$"],
            }
        ],
    }


def _multiple_choice(task: str) -> dict[str, Any]:
    return {
        "task": task,
        "output_type": "multiple_choice",
        "doc_to_target": "label",
        "doc_to_choice": "choices",
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")
        ],
    }


def pack_contents(seed: int, items: int) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """``{task: (task config without its data path, records)}`` of the pack: a pure function of its args."""
    rng = random.Random(f"wsm-bench-pack:{seed}")
    tasks = {
        "wsm_copy": (_generation("wsm_copy"), _unique(_copy, rng, items)),
        "wsm_add": (_generation("wsm_add"), _unique(_add, rng, items)),
        "wsm_count": (_multiple_choice("wsm_count"), _unique(_count, rng, items)),
        "wsm_stdlib_doc": (_multiple_choice("wsm_stdlib_doc"), _stdlib_doc(rng, items)),
    }
    for config, _ in tasks.values():
        config.update(
            tag=PACK_TAG,
            dataset_path="json",
            test_split="test",
            doc_to_text=PROMPT,
            metadata={"version": PACK_VERSION},
        )
    return tasks


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def pack_sha256(contents: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]) -> str:
    """sha256 of the pack's task configs and data, independent of where it is written."""
    digest = hashlib.sha256()
    for task in sorted(contents):
        config, records = contents[task]
        digest.update(json.dumps({task: config}, sort_keys=True).encode())
        digest.update(hashlib.sha256(_jsonl(records)).digest())
    return digest.hexdigest()


def materialise(seed: int, items: int, cache_dir: str | Path) -> tuple[Path, str]:
    """``(directory of the pack's YAML and JSONL, its sha256)``; written once per content hash."""
    contents = pack_contents(seed, items)
    sha = pack_sha256(contents)
    base = Path(cache_dir).expanduser() / "bench-pack"
    final = base / sha[:16]
    if (final / "done").is_file():
        return final, sha
    base.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: a concurrent or failed writer leaves nothing half-written.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
    try:
        for task, (config, records) in contents.items():
            data = tmp / DATA_FILE.format(task=task)
            data.write_bytes(_jsonl(records))
            written = {
                **config,
                "dataset_kwargs": {
                    "data_files": {"test": str(final / data.name)},
                    # datasets' Arrow cache stays beside the pack, not in the user's home.
                    "cache_dir": str(final / "hf-datasets"),
                },
            }
            (tmp / f"{task}.yaml").write_text(yaml.safe_dump(written, sort_keys=True))
        (tmp / "done").write_text(sha + "\n")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "done").is_file():  # not another writer's finished copy: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, sha
