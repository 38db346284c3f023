"""Stored models out of the store, rebuilt for inference, SFT, evaluation or export.

A *model dir* is the store-relative directory of a checkpoint (``runs/r/checkpoints/000…``) or of an
annealed/baseline model (``runs/r/models/name``). The run manifest says the shape and where the
tokenizer is; :func:`load_weights` gives full tensors under megatron's local-spec names whatever
the layout:

* a checkpoint in Megatron's ``torch_dist`` layout (``iter_<N>/``): its model chunks read by byte
  range through the merger's DCP reader (:func:`trainer.dist_load.read_weights`);
* one ``model.safetensors`` or HF-style shards: legacy checkpoints, baselines and merged models.
  A merge of ``torch_dist`` checkpoints keeps megatron's checkpoint names (layers stacked), which
  are mapped back (:func:`trainer.weights.from_dist_names`);
* a Hugging Face Llama directory outside the store (``hf:<path>``, :mod:`trainer.hf_dir`), read in
  the context of a run: its shape from its ``config.json``, the run's tokenizer and held-out data.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from megatron.core.models.gpt import GPTModel
from safetensors.torch import load_file
from tokenizers import Tokenizer

from trainer import external, hf_dir
from trainer.config import DataConfig, ModelConfig
from trainer.distributed import init_distributed
from trainer.model import build_model
from trainer.runinfo import run_model_config, tokenizer_store_path
from trainer.tokenizer import load_tokenizer
from trainer.units import format_tokens
from trainer.weights import from_dist_names, is_dist_named, load_full_state_dict
from wsm.store import ArtifactNotFoundError, CheckpointManifest, ModelManifest, RunManifest, Store, layout


@dataclass
class StoredModel:
    """Everything needed to rebuild a stored model: its manifest, the run's shape and tokenizer."""

    run: RunManifest
    model_dir: str
    manifest: CheckpointManifest | ModelManifest | hf_dir.HFModelDir
    model_cfg: ModelConfig
    padded_vocab: int
    tokenizer_path: Path

    @property
    def weight_sha256(self) -> list[str]:
        """sha256 of every weights file, by file name: what the evaluation cache key is built from
        (for a ``torch_dist`` checkpoint, every file of its DCP directory)."""
        if isinstance(self.manifest, hf_dir.HFModelDir):
            return self.manifest.weight_sha256
        if isinstance(self.manifest, CheckpointManifest) and self.manifest.location is not None:
            return [self.manifest.location.identity]  # an external checkpoint (trainer/external.py)
        dcp = layout.dcp_dir_of(f.name for f in self.manifest.files)
        return [
            f.sha256
            for f in sorted(self.manifest.files, key=lambda f: f.name)
            if (f.name.startswith(f"{dcp}/") if dcp else _is_weights_file(f.name))
        ]

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.tokenizer_path)

    @property
    def vocab_size(self) -> int:
        """Real vocabulary (the tokenizer's), without the padded rows."""
        return int(
            self.run.tokenizer.get("vocab_size") or self.tokenizer().get_vocab_size(with_added_tokens=True)
        )


def split_model_dir(model_dir: str) -> tuple[str, str, str]:
    """``(run, "checkpoints" | "models", name)`` of a store-relative model dir; ValueError otherwise."""
    parts = layout.split_artifact_dir(model_dir)
    if parts is None or parts[1] == layout.EVALS:
        raise ValueError(
            f"{model_dir!r} is not a model dir (runs/<run>/checkpoints/<tokens> or runs/<run>/models/<name>)"
        )
    return parts


class ModelNotFoundError(ArtifactNotFoundError, ValueError):
    """A run, checkpoint or model that is not in the store; the one-line message names what is.

    Still an :class:`ArtifactNotFoundError` for callers that catch store errors, and a ``ValueError``
    so that ``wsm`` prints it as a usage error instead of a traceback.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path)
        self.args = (message,)


def _listing(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:2])}, …, {', '.join(names[-(limit - 3) :])} ({len(names)} in all)"


def available(store: Store, run: str) -> str:
    """What ``run`` holds, for error messages: ``checkpoints: 200k, 400k; models: a, b``."""
    checkpoints = [format_tokens(c.tokens) for c in store.list_checkpoints(run)]
    models = [m.name for m in store.list_models(run)]
    return f"checkpoints: {_listing(checkpoints)}; models: {_listing(models)}"


def get_run(store: Store, run: str) -> RunManifest:
    """The run's manifest; :class:`ModelNotFoundError` naming the store's runs if there is none."""
    try:
        return store.get_run(run)
    except ArtifactNotFoundError:
        runs = [r.run for r in store.list_runs()]
        raise ModelNotFoundError(
            layout.run_dir(run), f"no run {run!r} in the store (runs: {_listing(runs)})"
        ) from None


def resolve(store: Store, run: str, model_dir: str, cache_dir: str | None = None) -> StoredModel:
    """Read the manifests of ``model_dir`` (which must belong to ``run``) and fetch the run's tokenizer.

    A missing run, checkpoint or model raises :class:`ModelNotFoundError` naming what the store has.
    ``model_dir`` may also be a Hugging Face directory (``hf:<path>``), read in the context of ``run``.
    """
    if hf_dir.is_model_dir(model_dir):
        return _resolve_hf_dir(store, run, model_dir, cache_dir)
    dir_run, kind, name = split_model_dir(model_dir)
    if dir_run != run:
        raise ValueError(f"{model_dir!r} is not in run {run!r}")
    run_manifest = get_run(store, run)
    manifest: CheckpointManifest | ModelManifest
    try:
        if kind == "checkpoints":
            if not name.isdigit():
                raise ValueError(f"{model_dir!r}: a checkpoint directory is named by its token count")
            manifest = store.get_checkpoint(run, int(name))
        else:
            manifest = store.get_model(run, name)
    except ArtifactNotFoundError:
        what = (
            f"checkpoint at {format_tokens(int(name))} tokens" if kind == "checkpoints" else f"model {name!r}"
        )
        raise ModelNotFoundError(model_dir, f"run {run!r} has no {what} ({available(store, run)})") from None
    if run_manifest.source is not None:  # an external run: the shape comes from Megatron's saved arguments
        model_cfg, padded = external.model_config(store, run_manifest, manifest)
    else:
        model_cfg, padded = run_model_config(run_manifest)
    return StoredModel(
        run_manifest,
        manifest.dir,
        manifest,
        model_cfg,
        padded,
        fetch_tokenizer(store, run_manifest, cache_dir),
    )


def _resolve_hf_dir(store: Store, run: str, model_dir: str, cache_dir: str | None) -> StoredModel:
    """A Hugging Face directory with ``run``'s tokenizer and data: the run's sequence length, so
    that its pre-training validation is the very sequences the run's own models are scored on."""
    run_manifest = get_run(store, run)
    if run_manifest.source is not None and not run_manifest.tokenizer.get("file"):
        raise ValueError(
            f"run {run!r} has no tokenizer registered, so no model can be evaluated in its context: "
            "register one with `wsm runs add ... --tokenizer PATH --overwrite`"
        )
    model = hf_dir.open_hf_dir(model_dir)
    tokenizer_path = fetch_tokenizer(store, run_manifest, cache_dir)
    hf_dir.check_tokenizer(model, load_tokenizer(tokenizer_path), run)
    model_cfg = model.model_cfg
    if run_manifest.source is None:
        seq_length = run_model_config(run_manifest)[0].seq_length
        if seq_length > model_cfg.seq_length:
            raise ValueError(
                f"{model.path}: max_position_embeddings={model_cfg.seq_length} is shorter than the "
                f"sequence length of run {run!r} ({seq_length})"
            )
        model_cfg = model_cfg.model_copy(update={"seq_length": seq_length})
    return StoredModel(run_manifest, model.dir, model, model_cfg, model.vocab_size, tokenizer_path)


def fetch_tokenizer(store: Store, run: RunManifest, cache_dir: str | None = None) -> Path:
    """The run's ``tokenizer.json`` in the local cache, keyed by its sha256 (a stable path, so data
    caches keyed by the tokenizer file stay valid across evaluations)."""
    sha = str(run.tokenizer.get("sha256") or "")
    base = Path(cache_dir or DataConfig().cache_dir).expanduser() / "tokenizers"
    target = base / f"{sha or run.run}.json"
    if sha and target.is_file():
        return target
    data = store.read_bytes(str(run.tokenizer.get("file") or tokenizer_store_path(run.run)))
    if sha and hashlib.sha256(data).hexdigest() != sha:
        raise ValueError(f"run {run.run}: stored tokenizer does not match the sha256 in the run manifest")
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=base, delete=False, suffix=".tmp") as fh:
        fh.write(data)
    Path(fh.name).replace(target)
    return target


def _is_weights_file(name: str) -> bool:
    return name.endswith(".safetensors") and not name.startswith("train_state")


def load_weights(
    store: Store, manifest: CheckpointManifest | ModelManifest | hf_dir.HFModelDir
) -> dict[str, torch.Tensor]:
    """Full canonical tensors of a checkpoint or model (either checkpoint layout, single file or
    shards, or a Hugging Face directory), verified."""
    if isinstance(manifest, hf_dir.HFModelDir):
        return hf_dir.load_weights(manifest)
    external_checkpoint = isinstance(manifest, CheckpointManifest) and manifest.location is not None
    if external_checkpoint or layout.dcp_dir_of(f.name for f in manifest.files):
        # Megatron's layout: a checkpoint (an external run's is read where it lies), or such a merge.
        from trainer.dist_load import read_weights

        return read_weights(store, manifest)
    names = [f.name for f in manifest.files if _is_weights_file(f.name)]
    if not names:
        raise ValueError(f"{manifest.dir} has no safetensors weights")
    store.verify(manifest, full=False, names=names)
    out: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory(prefix="wsm-eval-") as tmp:
        for name in sorted(names):
            # Checked against the manifest as it streams (local: in place; remote: while downloading).
            local = store.verified_local_path(manifest, name, tmp)
            # load_file copies into memory, so the temporary download may go away afterwards.
            out.update(load_file(local, device="cpu"))
    # Merges of torch_dist checkpoints (wsm's own or an external run's) keep megatron's stacked names.
    return from_dist_names(out) if is_dist_named(out) else out


def build_stored_model(
    store: Store, sm: StoredModel, device: torch.device, weights: dict[str, torch.Tensor] | None = None
) -> GPTModel:
    """The megatron model with the stored weights, fp32, in eval mode on ``device``.

    ``weights``: the model's tensors if the caller has read them already (they are copied, not
    kept), so that an evaluation reads and verifies them once.

    Built with the local (non-TE) spec even on GPU: sharpness needs double backward, which fused
    kernels lack, and evaluation should not depend on which fused kernels a machine has.
    """
    # The group's backend follows the device: megatron's loss all-reduces over the TP group even
    # at TP=1, and the model's tensors live on ``device``.
    init_distributed(1, cuda=device.type == "cuda")
    model = build_model(sm.model_cfg, sm.padded_vocab, cuda=False)
    load_full_state_dict(model, weights if weights is not None else load_weights(store, sm.manifest))
    return model.to(device).eval()


def load_run_model(
    store: Store, run: str, *, tokens: int | None = None, model: str | None = None, cuda: bool = False
) -> GPTModel:
    """A single-process (TP=1) model of ``run`` with the chosen weights loaded strictly, in eval mode.

    The default is the newest checkpoint.
    """
    if tokens is None and model is None:
        get_run(store, run)
        latest = store.latest_checkpoint(run)
        if latest is None:
            raise ValueError(f"run {run!r} has no checkpoints yet")
        tokens = latest.tokens
    if model is not None:
        directory = layout.model_dir(run, model)
    else:
        assert tokens is not None
        directory = layout.checkpoint_dir(run, tokens)
    sm = resolve(store, run, directory)
    init_distributed(1, cuda=cuda)
    gpt = build_model(sm.model_cfg, sm.padded_vocab, cuda=cuda)
    load_full_state_dict(gpt, load_weights(store, sm.manifest))
    return gpt.eval()
