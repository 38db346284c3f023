"""``/models/{id}``: a published model's manifest, and its weights as a streamed download.

Model id: ``<run>:<name>`` (api/convert.py). A single-file model streams ``model.safetensors``;
a sharded one, or one in Megatron's layout, takes ``?file=`` (a shard or the index; a file of the
DCP directory, ``release/.metadata``, or the tracker; the error lists them).
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from api.convert import model_out, split_model_id
from api.deps import StoreDep
from api.errors import ApiError, responses
from api.schemas import ModelOut
from wsm.store import ModelManifest, Store, layout, validate_name

router = APIRouter(tags=["models"])
CHUNK = 1024 * 1024


def _manifest(store: Store, model_id: str) -> ModelManifest:
    try:
        run, name = split_model_id(model_id)
    except ValueError as e:
        raise ApiError(400, "invalid_model_id", str(e)) from e
    return store.get_model(validate_name(run, "run name"), validate_name(name, "model name"))


def _downloadable(manifest: ModelManifest) -> list[str]:
    """The weights files of a model: one safetensors file, shards and their index, or a model in
    Megatron's layout (``--out-format torch_dist``): its DCP directory's files and the tracker."""
    dcp = layout.dcp_dir_of(f.name for f in manifest.files)
    if dcp is not None:
        return [
            layout.MEGATRON_TRACKER_FILE,
            *sorted(f.name for f in manifest.files if f.name.startswith(f"{dcp}/")),
        ]
    return manifest.weight_files + ([layout.MODEL_INDEX_FILE] if manifest.is_sharded else [])


@router.get(
    "/models/{model_id}", response_model=ModelOut, responses=responses(400, 404), summary="A model's manifest"
)
def get_model(model_id: str, request: Request, store: StoreDep) -> ModelOut:
    manifest = _manifest(store, model_id)
    return model_out(manifest, str(request.url_for("get_weights", model_id=model_id)))


@router.get(
    "/models/{model_id}/weights",
    name="get_weights",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The weights file (safetensors or index JSON)",
            "content": {"application/octet-stream": {}},
        },
        **responses(400, 404),
    },
    summary="Download a model's weights (streamed)",
)
def get_weights(
    model_id: str,
    store: StoreDep,
    file: str | None = Query(
        default=None,
        description="File of a sharded model (a shard or the index) or of a model in Megatron's layout.",
    ),
) -> StreamingResponse:
    manifest = _manifest(store, model_id)
    names = _downloadable(manifest)
    chosen = file or (layout.MODEL_FILE if layout.MODEL_FILE in names else None)
    if chosen not in names:
        raise ApiError(
            400,
            "invalid_file",
            f"model {model_id} has files {', '.join(names)}; choose one with ?file=",
            choices=names,
        )
    assert chosen is not None
    entry = manifest.file(chosen)
    path = manifest.path(chosen)

    def stream() -> Iterator[bytes]:
        with store.open(path) as f:
            while data := f.read(CHUNK):
                yield data

    return StreamingResponse(
        stream(),
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(entry.size),
            "Content-Disposition": f'attachment; filename="{chosen.rsplit("/", 1)[-1]}"',
            "X-Checksum-SHA256": entry.sha256,
        },
    )
