"""Streaming merge engine: safetensors or PyTorch DCP in, safetensors or ``torch_dist`` out.

Plan, then execute::

    plan = plan_merge(["a.safetensors", "b.safetensors"], [0.6, 0.4])   # metadata only, validated
    stats = execute_merge(plan, "out/")                                   # -> MergeStats
    plan = plan_merge(["run/iter_0001000", "run/iter_0002000"], [0.5, 0.5], out_format="torch_dist")

For parallel workers: ``parts = plan.split(n)``; ``merge_part(part, out_dir)`` on each;
``finalize_sharded(parts[0].plan, out_dir, stats_list, manifest=...)`` writes the metadata
(index, or ``.metadata``/``common.pt``/``metadata.json``) and the manifest.
"""

from merger.engine import execute_merge, finalize_sharded, merge_part, metadata_files, run_shards
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
    "finalize_sharded",
    "merge_part",
    "metadata_files",
    "plan_merge",
    "run_shards",
]
