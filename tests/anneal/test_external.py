"""External runs (bring your own run): registering, discovering checkpoints as they appear, merging in place.

The Megatron run is saved by megatron-core itself (tests/external_run.py); torchtitan's by
``torch.distributed.checkpoint.save`` (tests/merger/formats/dcp_fixtures.py). Nothing of a run's
checkpoints is ever copied into the store: only manifests pointing at them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from anneal import external, recovery, resolve, runner
from anneal.external import InvalidSourceError, NotEvaluableError, RunExistsError
from merger import store_io
from merger.errors import SourcesChangedError
from tests import external_run
from tests.anneal.test_pipeline import BROKER, InProcess
from tests.conftest import make_settings
from wsm.settings import Settings
from wsm.store import Store

T = external_run.TOKENS_PER_ITERATION


@pytest.fixture(scope="session")
def megatron_run() -> Path:
    return external_run.megatron_run()


@pytest.fixture(scope="session")
def titan_root() -> Path:
    fixtures = external_run.dcp_fixtures
    return fixtures.cached("torchtitan", fixtures.torchtitan_run)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return make_settings(store_url=str(tmp_path / "store"), state_dir=str(tmp_path / "state"))


@pytest.fixture()
def store(settings: Settings) -> Store:
    return Store(settings.store_url, settings=settings)


def test_register_points_at_the_checkpoints_and_copies_nothing(
    store: Store, megatron_run: Path, tmp_path: Path
) -> None:
    source = external_run.copy_run(tmp_path / "run", (10, 20))
    run, report = external.register(store, "ext", str(source))
    assert run.source is not None and (run.source.layout, run.source.uri) == ("megatron", str(source))
    assert report.added == [10 * T, 20 * T] and report.errors == []
    ckpts = store.list_checkpoints("ext")
    assert [(c.tokens, c.step) for c in ckpts] == [(10 * T, 10), (20 * T, 20)]
    for c in ckpts:
        assert c.files == [] and c.location is not None
        assert c.location.uri == str(source / f"iter_{c.step:07d}")
        on_disk = {p.name: p.stat().st_size for p in Path(c.location.uri).iterdir()}
        assert {f.name: f.size for f in c.location.files} == on_disk
        assert store_io.weights_sha256(c) == c.location.identity
        assert c.extra["megatron"]["args"]["num_layers"] == 2
    # Only manifests went into the store.
    stored = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert sorted(p.name for p in stored) == ["manifest.json"] * 3
    assert ckpts[0].location.identity != ckpts[1].location.identity  # type: ignore[union-attr]


def test_new_checkpoints_are_found_as_they_appear(
    store: Store, settings: Settings, megatron_run: Path, tmp_path: Path
) -> None:
    source = external_run.copy_run(tmp_path / "run", (10, 20))
    external.register(store, "ext", str(source))
    # A checkpoint still being written (no .metadata yet) is not one.
    partial = external_run.add_iteration(source, 30)
    (partial / ".metadata").rename(tmp_path / "held-back")
    assert not external.refresh(store, store, "ext", ttl_s=0)
    assert [c.tokens for c in store.list_checkpoints("ext")] == [10 * T, 20 * T]
    (tmp_path / "held-back").rename(partial / ".metadata")
    # Fresh listing within the TTL: nothing is listed again.
    assert not external.refresh(store, store, "ext", ttl_s=3600)
    assert external.refresh(store, store, "ext", ttl_s=0)
    assert [c.tokens for c in store.list_checkpoints("ext")] == [10 * T, 20 * T, 30 * T]
    # The workers' recovery sweep finds the next one (and nothing else changes).
    external_run.add_iteration(source, 40)
    sweeper = recovery.Recovery(
        store, settings.model_copy(update={"external_sync_ttl_s": 0.0}), lambda r, j: None, lambda r, j: None
    )
    assert sweeper.sweep() == []
    assert [c.tokens for c in store.list_checkpoints("ext")][-1] == 40 * T
    # A checkpoint deleted at the source is unregistered (its data was never the store's).
    shutil.rmtree(source / "iter_0000010")
    report = external.sync(store, store.get_run("ext"))
    assert report.removed == [10 * T] and report.checkpoints == 3


def test_a_checkpoint_saved_again_is_refused_until_synced(
    store: Store, megatron_run: Path, tmp_path: Path
) -> None:
    source = external_run.copy_run(tmp_path / "run", (10, 20))
    external.register(store, "ext", str(source))
    ck = store.get_checkpoint("ext", 20 * T)
    store_io.checkpoint_ref(store, ck)  # unchanged: opens
    # Saved again in place: torch writes a new save_id into .metadata.
    shutil.copy(megatron_run / "iter_0000030" / ".metadata", source / "iter_0000020" / ".metadata")
    with pytest.raises(SourcesChangedError, match=r"was saved again .* --recheck"):
        store_io.checkpoint_ref(store, ck)
    assert external.sync(store, store.get_run("ext")).replaced == []
    report = external.sync(store, store.get_run("ext"), recheck=True)
    assert report.replaced == [20 * T]
    store_io.checkpoint_ref(store, store.get_checkpoint("ext", 20 * T))


def test_torchtitan_run_with_tokens_per_step_anneals(
    store: Store, settings: Settings, titan_root: Path
) -> None:
    titan_steps = external_run.dcp_fixtures.TITAN_STEPS
    run, report = external.register(store, "titan", str(titan_root), tokens_per_step=1000)
    assert run.source is not None and run.source.layout == "torchtitan"
    assert report.added == [s * 1000 for s in titan_steps]
    spec = resolve.resolve(
        store,
        curve=resolve.curve_spec("1-sqrt", alpha=None, floor=0.0),
        request=resolve.window_request(str(titan_steps[1] * 1000), None, None, None),
        run="titan",
        evaluate=False,
    )
    assert spec.tokens == [s * 1000 for s in titan_steps]
    from anneal import jobs

    record = jobs.JobRecord(job_id=spec.job_id(), spec=spec)
    jobs.save(store, record)
    assert (
        runner.anneal(store, settings, BROKER, "titan", record.job_id, InProcess(store, settings).dispatch())
        == "done"
    )
    model = store.get_model("titan", spec.model_name)
    assert [(s.tokens, s.sha256) for s in model.sources] == [
        (c.tokens, c.location.identity) for c in store.list_checkpoints("titan") if c.location is not None
    ]
    merged = load_file(str(store.local_path(f"{model.dir}/model.safetensors")))
    like = {k: torch.empty(v.shape, dtype=v.dtype) for k, v in merged.items()}
    inputs = [external_run.raw_tensors(titan_root / f"step-{s}", like) for s in titan_steps]
    c = [s.c for s in spec.selection.sources]
    for name, got in merged.items():
        if got.is_floating_point():
            ref = sum(ci * x[name].double() for ci, x in zip(c, inputs, strict=True))
            tol = 2**-7 if got.dtype == torch.bfloat16 else 1e-6
            torch.testing.assert_close(got, ref.to(got.dtype), rtol=tol, atol=1e-6)
        else:
            assert torch.equal(got, inputs[-1][name]), name


def test_clear_errors(store: Store, megatron_run: Path, titan_root: Path, tmp_path: Path) -> None:
    source = external_run.copy_run(tmp_path / "run", (10,))
    with pytest.raises(InvalidSourceError, match="unknown layout 'nemo'") as e:
        external.register(store, "x", str(source), layout="nemo")
    assert e.value.choices == ["auto", "megatron", "torchtitan", "olmo-core"]
    with pytest.raises(InvalidSourceError, match="torchtitan checkpoints do not record how many tokens"):
        external.register(store, "x", str(titan_root))
    with pytest.raises(InvalidSourceError, match="holds torchtitan checkpoints, no megatron ones"):
        external.register(store, "x", str(titan_root), layout="megatron")
    with pytest.raises(InvalidSourceError, match="no such directory"):
        external.register(store, "x", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidSourceError, match=r"no complete checkpoint there yet.*--layout"):
        external.register(store, "x", str(tmp_path / "empty"))
    with pytest.raises(InvalidSourceError, match=r"not a Hugging Face tokenizer.json"):
        external.register(
            store, "x", str(source), tokenizer=str(source / "latest_checkpointed_iteration.txt")
        )
    assert store.list_runs() == []  # nothing was written by a refused registration
    # An explicit layout registers a run before its first checkpoint.
    run, report = external.register(store, "early", str(tmp_path / "empty"), layout="megatron")
    assert report.added == [] and run.source is not None
    external.register(store, "ext", str(source))
    with pytest.raises(RunExistsError, match="exists already"):
        external.register(store, "ext", str(source))
    # Evaluation needs a tokenizer (and, for other layouts than Megatron, is not possible).
    with pytest.raises(NotEvaluableError, match="no tokenizer registered"):
        resolve.resolve(
            store,
            curve=resolve.curve_spec("1-sqrt", alpha=None, floor=0.0),
            request=resolve.window_request(str(T), None, None, None),
            run="ext",
        )
    tokenizer = external_run.char_tokenizer(tmp_path / "tokenizer.json")
    run, _ = external.register(store, "ext", str(source), tokenizer=str(tokenizer), overwrite=True)
    assert run.tokenizer["file"] == "runs/ext/tokenizer.json"
    assert store.read_bytes("runs/ext/tokenizer.json") == tokenizer.read_bytes()
    assert len(store.list_checkpoints("ext")) == 1  # registering again keeps what is known
    external.register(store, "titan", str(titan_root), tokens_per_step=10)
    with pytest.raises(NotEvaluableError, match="is a torchtitan run"):
        external.check_evaluable(store.get_run("titan"))


def test_megatron_without_token_count_is_refused(store: Store, megatron_run: Path, tmp_path: Path) -> None:
    """A Megatron run trained with a batch-size ramp-up cannot count tokens from its arguments."""
    source = external_run.copy_run(tmp_path / "run", (10,))
    common = source / "iter_0000010" / "common.pt"
    state = torch.load(common, weights_only=False)
    state["args"].rampup_batch_size = [2, 2, 100]
    torch.save(state, common)
    with pytest.raises(InvalidSourceError, match=r"rampup_batch_size.*give the tokens per step"):
        external.register(store, "ext", str(source))
    _, report = external.register(store, "ext", str(source), tokens_per_step=1000)
    assert report.added == [10_000]
