"""gcp-storage-emulator on 127.0.0.1 with two behaviours of real GCS that it lacks.

tensorstore (Orbax's OCDBT checkpoints) reads an object's generation from the
x-goog-generation header of a download and rewrites its manifest with an ifGenerationMatch
precondition; the workdir lock creates its object with ifGenerationMatch=0 (only if absent).
This adds both: the header on downloads, and preconditions on uploads and deletes (HTTP 412
when unmet), as the GCS JSON API documents them.

    python tests/gcs_emulator.py PORT BUCKET   # serves until killed
"""

import sys
import threading
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_WRITES = threading.Lock()  # a precondition check and its write happen as one step


def _generation(storage, bucket: str, name: str) -> str:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"  # GCS: ifGenerationMatch=0 means "the object must not exist"


def _unmet(request, storage, name: str | None) -> bool:
    wanted = request.query.get("ifGenerationMatch")
    if not wanted or name is None:
        return False
    return wanted[0] != _generation(storage, request.params["bucket_name"], name)


def _upload_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    return data.get("meta", {}).get("name") if isinstance(data, dict) else None


def _conditional(handler, object_name):
    def wrapped(request, response, storage, *args, **kwargs):
        with _WRITES:
            if _unmet(request, storage, object_name(request)):
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
            return handler(request, response, storage, *args, **kwargs)

    return wrapped


def _with_generation_header(handler):
    def wrapped(request, response, storage, *args, **kwargs):
        result = handler(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            bucket, name = request.params["bucket_name"], request.params["object_id"]
            response["x-goog-generation"] = _generation(storage, bucket, name)
            response["x-goog-metageneration"] = "1"
        return result

    return wrapped


def _patch_handlers() -> None:
    originals = {name: getattr(objects, name) for name in ("download", "insert", "delete")}
    replacements = {
        originals["download"]: _with_generation_header(originals["download"]),
        originals["insert"]: _conditional(originals["insert"], _upload_name),
        originals["delete"]: _conditional(originals["delete"], lambda r: r.params["object_id"]),
    }
    for name, handler in originals.items():  # callers by name: get(?alt=media), the router
        setattr(objects, name, replacements[handler])
    for _, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            methods[method] = replacements.get(handler, handler)


if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    _patch_handlers()
    emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    emulator.start()
    print(f"serving on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()
