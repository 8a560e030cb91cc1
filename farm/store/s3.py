"""The s3 backend of the output store: any S3-compatible object store (AWS S3, MinIO, Ceph).

``FARM_OUTPUT_URL=s3://bucket/prefix``. The layout is the file store's, under the prefix (every key
component comes from hashes, never from prompt text)::

    s3://<bucket>/<prefix>/<id[:2]>/<id>/video.mp4
                                         poster.png
                                         frames/00000.png ...      (output_format "mp4+frames")
                                         output.json               (the sidecar, uploaded last)
    s3://<bucket>/<prefix>/.quarantine/<id>.<utc time>.<random>/    (bad outputs moved aside)

A job records its video's URI, ``s3://<bucket>/<prefix>/<id[:2]>/<id>/video.mp4``; like the file
store, this store maps a URI back by its last three components only. Every object carries its
sha256 as user metadata (:data:`SHA256_METADATA`, ``x-amz-meta-farm-sha256``), set by the uploader.

* Quick checks (:meth:`S3OutputStore.vouches`, ``check(hash_file=False)``) are HEAD requests:
  size, sha256 metadata and last-modified time against the ledger's record and verified stamp.
* Full checks (:meth:`S3OutputStore.check`, :meth:`S3OutputStore.verify`) download the object and
  hash its bytes.
* Downloads are presigned GET URLs (valid ``FARM_S3_PRESIGN_EXPIRY_S`` seconds), signed offline
  for the endpoint clients reach (``FARM_S3_PUBLIC_ENDPOINT_URL``, else the endpoint).
* An error reaching the store is :class:`~farm.errors.StoreUnavailable` (transient: retried).

Writing (encode into local staging, upload, confirm, only then return) is
:class:`farm.store.writer.S3OutputWriter`'s. obstore is imported on first use: importing this
module (producers do) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import posixpath
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Self, TypeVar
from urllib.parse import unquote, urlsplit

from farm.errors import OutputMissing, StorageError, StoreUnavailable
from farm.settings import DEFAULT_S3_PRESIGN_EXPIRY_S, DEFAULT_S3_REGION
from farm.store.layout import (
    POSTER_FILENAME,
    QUARANTINE_DIRNAME,
    SIDECAR_FILENAME,
    STALE_TEMP_S,
    VIDEO_FILENAME,
    OutputCheck,
    OutputState,
    OutputStore,
    RecordedOutput,
    Served,
    StoredOutput,
    is_sha256_hex,
    read_sidecar_bytes,
    stored_from_sidecar,
    video_tail,
)

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3Store

    from farm.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")

S3_SCHEME = "s3"
#: User metadata holding an object's sha256 (hex), set by the uploader (``x-amz-meta-farm-sha256``).
SHA256_METADATA = "farm-sha256"
#: Content types of the stored files, by extension.
CONTENT_TYPES = {".mp4": "video/mp4", ".png": "image/png", ".json": "application/json"}
#: Per-request limits of the S3 client. Its own retries are few and short: farm's retries (with
#: backoff, see :func:`farm.queue.enqueue.retrying`) wrap every store call a worker makes.
CONNECT_TIMEOUT = "5s"
REQUEST_TIMEOUT = "300s"
CLIENT_MAX_RETRIES = 2
CLIENT_RETRY_TIMEOUT_S = 20.0
#: Bytes read at a time when an object is hashed or downloaded.
DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024
#: Longest error text kept from the S3 client (its messages carry a long debug dump).
ERROR_TEXT_MAX = 300


def content_type(name: str) -> str:
    """The content type an object is stored with (by its extension)."""
    return CONTENT_TYPES.get(PurePosixPath(name).suffix, "application/octet-stream")


def short_error(exc: BaseException) -> str:
    """The first line of an S3 client error, capped (the rest is a debug dump)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:ERROR_TEXT_MAX]


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix (``s3://bucket/prefix``; the prefix may be empty)."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """The location of an ``s3://bucket/prefix`` URL (ValueError for anything else)."""
        parts = urlsplit(url)
        if parts.scheme.lower() != S3_SCHEME or not parts.netloc or "@" in parts.netloc:
            raise ValueError(f"not an s3://BUCKET/PREFIX URL: {url!r}")
        components = [c for c in unquote(parts.path).split("/") if c]
        if any(c in (".", "..") for c in components):
            raise ValueError(f"an s3 prefix has no '.' or '..' components: {url!r}")
        return cls(parts.netloc, "/".join(components))

    @property
    def url(self) -> str:
        """``s3://bucket/prefix`` (no trailing slash)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def uri_of(self, key: str) -> str:
        """The ``s3://`` URI of a key relative to the prefix."""
        return f"{self.url}/{key}"


@dataclass(frozen=True)
class ObjectHead:
    """What a HEAD request says of an object."""

    size: int
    last_modified: datetime
    #: The sha256 metadata its uploader set (None: none).
    sha256: str | None


class S3OutputStore:
    """The output store in an S3-compatible bucket (see the module docstring).

    ``staging`` is the local directory writers encode renders into before their upload (its stale
    temporary entries are what :meth:`clean_temp` removes). Credentials: ``access_key_id`` and
    ``secret_access_key``, else the standard AWS chain (``AWS_*`` variables, an instance role). They
    are never logged, and never part of ``repr``.
    """

    def __init__(
        self, url: str, *, staging: Path, endpoint_url: str | None = None, public_endpoint_url: str | None = None,
        region: str = DEFAULT_S3_REGION, access_key_id: str | None = None, secret_access_key: str | None = None,
        presign_expiry_s: int = DEFAULT_S3_PRESIGN_EXPIRY_S,
    ):
        self.loc = S3Location.parse(url)
        self.staging = Path(staging)
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url
        self.region = region
        self.presign_expiry_s = presign_expiry_s
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._clients: dict[bool, S3Store] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The store ``FARM_OUTPUT_URL`` and the ``FARM_S3_*`` settings name."""
        secret = settings.s3_secret_access_key
        return cls(
            settings.output_store_url, staging=settings.outputs_path, endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url, region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=None if secret is None else secret.get_secret_value(),
            presign_expiry_s=settings.s3_presign_expiry_s,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.loc.url!r}, endpoint={self.endpoint_url!r})"

    # -- the S3 client ----------------------------------------------------------------------------
    def client(self, *, public: bool = False) -> S3Store:
        """The obstore client (made on first use); ``public``: the one that signs download URLs."""
        with self._lock:
            found = self._clients.get(public)
            if found is None:
                found = self._clients[public] = self._make_client(public)
            return found

    def _make_client(self, public: bool) -> S3Store:
        from obstore.store import S3Store

        endpoint = (self.public_endpoint_url or self.endpoint_url) if public else self.endpoint_url
        config: S3Config = {"region": self.region}
        if endpoint:
            config["endpoint"] = endpoint
        if self._access_key_id:
            config["access_key_id"] = self._access_key_id
            config["secret_access_key"] = self._secret_access_key or ""
        options: ClientConfig = {"connect_timeout": CONNECT_TIMEOUT, "timeout": REQUEST_TIMEOUT,
                                 "allow_http": bool(endpoint and endpoint.lower().startswith("http://"))}
        retry: RetryConfig = {"max_retries": CLIENT_MAX_RETRIES,
                              "retry_timeout": timedelta(seconds=CLIENT_RETRY_TIMEOUT_S),
                              "backoff": {"init_backoff": timedelta(milliseconds=100),
                                          "max_backoff": timedelta(seconds=2), "base": 2}}
        return S3Store(self.loc.bucket, prefix=self.loc.prefix or None, config=config, client_options=options,
                       retry_config=retry)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``; an S3 client error becomes :class:`~farm.errors.StoreUnavailable` (FileNotFoundError stays)."""
        try:
            return fn()
        except FileNotFoundError:
            raise
        except Exception as exc:  # obstore's errors (connection, HTTP status, credentials)
            raise StoreUnavailable(f"{what} in {self.loc.url}: {short_error(exc)}") from exc

    def head(self, key: str) -> ObjectHead | None:
        """The size, time and sha256 metadata of ``key`` (None: no such object)."""
        import obstore

        try:
            result = self.call(f"HEAD {key}", lambda: obstore.get(self.client(), key, options={"head": True}))
        except FileNotFoundError:
            return None
        meta = result.meta
        return ObjectHead(int(meta["size"]), meta["last_modified"], result.attributes.get(SHA256_METADATA))

    def read(self, key: str) -> bytes | None:
        """The bytes of a (small) object (None: no such object)."""
        import obstore

        try:
            return self.call(f"GET {key}", lambda: bytes(obstore.get(self.client(), key).bytes()))
        except FileNotFoundError:
            return None

    def hash_object(self, key: str) -> tuple[str, int] | None:
        """``(sha256, size)`` of an object's bytes, downloaded (None: no such object)."""
        import obstore

        def digest() -> tuple[str, int]:
            h, size = hashlib.sha256(), 0
            for chunk in obstore.get(self.client(), key).stream(min_chunk_size=DOWNLOAD_CHUNK_BYTES):
                h.update(chunk)
                size += len(chunk)
            return h.hexdigest(), size

        try:
            return self.call(f"downloading {key}", digest)
        except FileNotFoundError:
            return None

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` (a folder: ``ab/<id>``), sorted."""
        import obstore

        def listing() -> list[str]:
            return sorted(m["path"] for chunk in obstore.list(self.client(), prefix) for m in chunk)

        try:
            return self.call(f"listing {prefix}", listing)
        except FileNotFoundError:
            return []

    # -- keys and URIs ----------------------------------------------------------------------------
    @property
    def location(self) -> str:
        """``s3://bucket/prefix``."""
        return self.loc.url

    @staticmethod
    def dir_key(output_id: str) -> str:
        """The key folder of ``output_id`` (``<id[:2]>/<id>``, relative to the prefix)."""
        if not is_sha256_hex(output_id):
            raise ValueError("output_id must be a lowercase sha256 hex string")
        return f"{output_id[:2]}/{output_id}"

    def uri_of(self, key: PurePath | str) -> str:
        """The ``s3://`` URI of a key (relative to the prefix)."""
        return self.loc.uri_of(PurePosixPath(key).as_posix())

    def locate(self, uri: str | None, *, poster: bool = False) -> str | None:
        """The key of an output's video (or poster) in this store, by the URI's last three components.

        None when ``uri`` is not an s3 output URI.
        """
        if not uri:
            return None
        parts = urlsplit(uri)
        if parts.scheme != S3_SCHEME:
            return None
        tail = video_tail(parts.path)
        if tail is None:
            return None
        shard, output_id = tail
        return f"{shard}/{output_id}/{POSTER_FILENAME if poster else VIDEO_FILENAME}"

    def where(self, uri: str | None, *, poster: bool = False) -> str | None:
        """The ``s3://`` URI of an output's video (or poster) in this store (None: not an s3 output URI)."""
        key = self.locate(uri, poster=poster)
        return None if key is None else self.loc.uri_of(key)

    # -- the backend API --------------------------------------------------------------------------
    def present(self) -> bool:
        """Whether the bucket can be reached and listed with these credentials."""
        import obstore

        try:
            self.call("listing", lambda: next(iter(obstore.list(self.client(), chunk_size=1)), None))
        except (StorageError, FileNotFoundError) as exc:
            log.warning("output store %s not reachable: %s", self.loc.url, exc)
            return False
        return True

    def exists(self, uri: str | None) -> bool:
        """Whether an output's video is in the bucket."""
        key = self.locate(uri)
        return key is not None and self.head(key) is not None

    def serve(self, uri: str | None, *, poster: bool = False) -> Served | None:
        """A presigned GET URL of an output's video (or poster); None when it is not in the bucket."""
        import obstore

        key = self.locate(uri, poster=poster)
        if key is None or self.head(key) is None:
            return None
        expires = timedelta(seconds=self.presign_expiry_s)
        url = self.call(f"signing {key}", lambda: obstore.sign(self.client(public=True), "GET", key, expires))
        return Served(url=url)

    def copy_to(self, uri: str | None, dest: Path, *, poster: bool = False) -> None:
        """Download an output's video (or poster) to ``dest`` (a temporary file, then a rename)."""
        import obstore

        key = self.locate(uri, poster=poster)
        if key is None:
            raise OutputMissing(f"{uri} is not an output URI of the store {self.loc.url}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")

        def download() -> None:
            with open(tmp, "wb") as fh:
                for chunk in obstore.get(self.client(), key).stream(min_chunk_size=DOWNLOAD_CHUNK_BYTES):
                    fh.write(chunk)

        try:
            self.call(f"downloading {key}", download)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise OutputMissing(f"{self.loc.uri_of(key)} is not in the store") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(dest)

    def check(
        self, uri: str, expected_sha256: str, *, size_bytes: int | None = None, verified_at: datetime | None = None,
        hash_file: bool = True,
    ) -> OutputCheck:
        """Check a recorded output (its video and poster) against its record.

        ``hash_file``: download and hash the video (``ok``, ``corrupt`` or ``missing``). Without
        it, the quick check (HEAD): ``ok`` when the size and the sha256 metadata match the record
        and the object has not changed since ``verified_at``, ``unverified`` when that cannot be
        said, ``missing``/``corrupt`` when it is gone or its size differs.
        :class:`~farm.errors.StoreUnavailable` when the store cannot be reached (nothing is
        concluded from an outage).
        """
        key = self.locate(uri)
        if key is None:
            return OutputCheck(uri, OutputState.MISSING, "not an output URI of this store")
        head = self.head(key)
        if head is None:
            return OutputCheck(uri, OutputState.MISSING, "object not found")
        if size_bytes is not None and head.size != size_bytes:
            return OutputCheck(uri, OutputState.CORRUPT, f"{head.size} bytes, recorded {size_bytes}",
                               size_bytes=head.size)
        if self.head(posixpath.join(posixpath.dirname(key), POSTER_FILENAME)) is None:
            return OutputCheck(uri, OutputState.CORRUPT, "the poster next to it is missing", size_bytes=head.size)
        if not hash_file:
            fresh = (size_bytes is not None and verified_at is not None and head.sha256 == expected_sha256
                     and head.last_modified <= verified_at)
            if fresh:
                return OutputCheck(uri, OutputState.OK, "unchanged since verified", size_bytes=head.size)
            return OutputCheck(uri, OutputState.UNVERIFIED, "changed or never verified", size_bytes=head.size)
        found = self.hash_object(key)
        if found is None:
            return OutputCheck(uri, OutputState.MISSING, "object not found")
        actual, size = found
        if actual != expected_sha256:
            return OutputCheck(uri, OutputState.CORRUPT, "sha256 differs from the record", actual, size)
        return OutputCheck(uri, OutputState.OK, "", actual, size)

    def vouches(self, record: RecordedOutput) -> bool:
        """The producer's quick check (HEAD only); False when the store cannot be reached."""
        try:
            return self.check(record.uri, record.file_sha256, size_bytes=record.size_bytes,
                              verified_at=record.verified_at, hash_file=False).ok
        except StorageError as exc:
            log.warning("output %s not vouched for: %s", record.uri, exc)
            return False

    def get(self, output_id: str) -> StoredOutput | None:
        """The stored output with this id, from its sidecar (None: no sidecar, the output is absent)."""
        folder = self.dir_key(output_id)
        data = self.read(f"{folder}/{SIDECAR_FILENAME}")
        if data is None:
            return None
        sidecar = read_sidecar_bytes(data, self.loc.uri_of(folder))
        return stored_from_sidecar(PurePosixPath(folder), sidecar, self.uri_of, encode_seconds=0.0, reused=True)

    def verify(self, stored: StoredOutput) -> bool:
        """True when the output's objects are all there and the video's bytes (downloaded) match the record."""
        found = self.hash_object(PurePosixPath(stored.path).as_posix())
        if found != (stored.file_sha256, stored.size_bytes):
            return False
        if self.head(PurePosixPath(stored.poster_path).as_posix()) is None:
            return False
        if stored.frames_dir is not None:
            folder = PurePosixPath(stored.frames_dir).as_posix()
            want = {f"{folder}/{i:05d}.png" for i in range(stored.shape[0])}
            if not want <= set(self.keys(folder)):
                return False
        return True

    def quarantine(self, uri: str, reason: str) -> str | None:
        """Move an output's objects under ``.quarantine/`` (copied, then deleted; never lost).

        The quarantine folder's URI, or None when there was nothing to move.
        """
        key = self.locate(uri)
        return None if key is None else self.quarantine_folder(posixpath.dirname(key), reason)

    def quarantine_folder(self, folder: str, reason: str) -> str | None:
        """Move every object under ``folder`` (``<id[:2]>/<id>``) into the quarantine; its URI (None: empty)."""
        import obstore

        found = self.keys(folder)
        if not found:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        target = f"{QUARANTINE_DIRNAME}/{posixpath.basename(folder)}.{stamp}.{secrets.token_hex(3)}"
        client = self.client()

        def move() -> None:
            for key in found:
                with contextlib.suppress(FileNotFoundError):  # gone meanwhile (another repair moved it)
                    obstore.copy(client, key, f"{target}/{key[len(folder) + 1:]}")
            obstore.delete(client, found)  # only once every copy is made

        self.call(f"moving {folder} into the quarantine", move)
        log.warning("quarantined %s as %s: %s", self.loc.uri_of(folder), self.loc.uri_of(target), reason)
        return self.loc.uri_of(target)

    def clean_temp(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Remove stale temporary entries (``.tmp-*``) of the local staging directory."""
        return OutputStore(self.staging).clean_temp(older_than_s)

