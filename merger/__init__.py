"""Streaming safetensors merge engine (and, later, the Celery app and tasks that run it).

Plan, then execute::

    plan = plan_merge(["a.safetensors", "b.safetensors"], [0.6, 0.4])   # headers only, validated
    stats = execute_merge(plan, "out/")                                   # -> MergeStats

For parallel workers: ``parts = plan.split(n)``; ``merge_part(part, out_dir)`` on each;
``finalize_sharded(parts[0].plan, out_dir, stats_list, manifest=...)`` writes index + manifest.
"""

from merger.engine import execute_merge, finalize_index, finalize_sharded, merge_part, run_shards
from merger.errors import CorruptFileError, MergeError, MismatchError, WeightError
from merger.plan import MergePart, MergePlan, ShardPlan, TensorPlan, plan_merge
from merger.stats import MergeStats

__all__ = [
    "CorruptFileError",
    "MergeError",
    "MergePart",
    "MergePlan",
    "MergeStats",
    "MismatchError",
    "ShardPlan",
    "TensorPlan",
    "WeightError",
    "execute_merge",
    "finalize_index",
    "finalize_sharded",
    "merge_part",
    "plan_merge",
    "run_shards",
]
