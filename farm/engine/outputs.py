"""A job's outputs: the frames hash, a bit-exact MP4, a poster PNG, PNG frames, and the
content-addressed store that holds them.

Identity and integrity:

* :func:`frames_sha256` — sha256 over a small header (shape, dtype) and the C-contiguous bytes of
  the decoded uint8 frames. This is the *reproducibility identity* of a render: the same spec on
  the same environment must give the same value. The render engine imports it from here.
* ``file_sha256`` — sha256 of the MP4 file's bytes, for storage integrity (``verify``).

The MP4 is H.264 (libx264), yuv420p, BT.709 limited range, encoded by imageio-ffmpeg's bundled
ffmpeg with one thread everywhere and ffmpeg's bitexact flags, so the same frames give the same
bytes on any CPU count or affinity with one ffmpeg build (see :data:`ENCODE_ARGS`). Raw RGB frames
are piped to ffmpeg's stdin; nothing but the output file touches the disk. Frames with an odd
width or height are padded by one replicated row/column for the MP4 (4:2:0 chroma needs even
sides); the poster and PNG frames keep the exact size.

The poster is the middle frame (index ``F // 2``): the first frame of a text-to-video render is
often the least resolved, the middle one is the most representative. PNGs are written by Pillow
with fixed options and no metadata chunks (no time, no text).

Store layout (every path component comes from hashes, never from prompt text)::

    <root>/<id[:2]>/<id>/video.mp4
                        poster.png
                        frames/00000.png ...      (output_format "mp4+frames" only)
                        output.json               (sidecar: hashes and parameters, no prompt)

where ``id`` (``output_id``) is sha256 over the frames hash, the fps, the output format and the
encoding profile: everything that decides the directory's content. A directory is written under a
temporary name in the same parent, fsynced, and renamed into place, so it is complete or absent;
two writers of the same frames race harmlessly (the first rename wins; the other checks the
winner and returns it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from farm.errors import StorageError

#: Domain tag of :func:`frames_sha256`; changing it changes every frames hash.
FRAMES_HASH_DOMAIN = "farm.frames/1"
#: Version of the encoding profile (:data:`ENCODE_ARGS`, poster choice, PNG options, sidecar
#: layout). Part of every ``output_id``: bump it whenever any of those change.
ENCODE_PROFILE = "farm.h264-crf18-medium-bt709/1"
#: File names inside one output directory.
VIDEO_FILENAME = "video.mp4"
POSTER_FILENAME = "poster.png"
FRAMES_DIRNAME = "frames"
SIDECAR_FILENAME = "output.json"
SIDECAR_FORMAT = "farm.output/1"
#: Temporary directories and files start with this (``clean_temp`` removes stale ones).
TEMP_PREFIX = ".tmp-"
#: zlib level for PNGs (fixed so the bytes are stable with one zlib build).
PNG_COMPRESS_LEVEL = 6
#: How long ffmpeg may take per frame before the encode is abandoned (generous; 4K frames included).
FFMPEG_SECONDS_PER_FRAME = 10.0
FFMPEG_MIN_TIMEOUT_SECONDS = 60.0

OutputFormat = Literal["mp4", "mp4+frames"]
OUTPUT_FORMATS: tuple[str, ...] = ("mp4", "mp4+frames")

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

#: swscale flags: bit-exact C paths and accurate rounding, so the RGB->YUV conversion does not
#: depend on the CPU's SIMD extensions.
_SCALE_FILTER = (
    "scale=flags=bitexact+accurate_rnd+full_chroma_int:out_color_matrix=bt709:out_range=tv,format=yuv420p"
)

#: Encoder options after the input. What keeps the bytes stable (checked: same frames encoded in
#: processes pinned to one CPU vs all CPUs): ``-threads 1`` and ``threads=1`` for x264 (x264's
#: frame threading otherwise depends on the CPU count and changes the bitstream);
#: ``-fflags +bitexact`` / ``-flags:v +bitexact`` keep ffmpeg's version string and other volatile
#: data out of the container and stream; ``-map_metadata -1`` drops any metadata.
ENCODE_ARGS: tuple[str, ...] = (
    "-an",
    "-filter_threads", "1",
    "-vf", _SCALE_FILTER,
    "-c:v", "libx264",
    "-preset", "medium",
    "-crf", "18",
    "-pix_fmt", "yuv420p",
    "-threads", "1",
    "-x264-params", "threads=1:lookahead-threads=1:sliced-threads=0",
    "-colorspace", "bt709",
    "-color_primaries", "bt709",
    "-color_trc", "bt709",
    "-color_range", "tv",
    "-fflags", "+bitexact",
    "-flags:v", "+bitexact",
    "-map_metadata", "-1",
    "-movflags", "+faststart",
    "-f", "mp4",
)


# -- hashes ------------------------------------------------------------------------------------


def frames_sha256(frames: np.ndarray) -> str:
    """The reproducibility identity of a render: sha256 over ``farm.frames/1``, the shape and the
    dtype, then the frames' C-contiguous bytes. Equal frames give equal hashes on any machine."""
    arr = np.ascontiguousarray(frames)
    shape = "x".join(str(n) for n in arr.shape)
    header = f"{FRAMES_HASH_DOMAIN}\nshape={shape}\ndtype={arr.dtype.str}\n".encode("ascii")
    digest = hashlib.sha256(header)
    if arr.size:
        digest.update(arr.data.cast("B"))
    return digest.hexdigest()


def file_sha256(path: Path, *, chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(path, "rb") as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def output_id_of(frames_hash: str, fps: int, output_format: str) -> str:
    """The store key: sha256 over everything that decides an output directory's content."""
    payload = json.dumps(
        {"encode_profile": ENCODE_PROFILE, "fps": fps, "frames_sha256": frames_hash,
         "output_format": output_format},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


# -- checks ------------------------------------------------------------------------------------


def check_frames(frames: Any) -> np.ndarray:
    """``frames`` as a C-contiguous uint8 array of shape (F, H, W, 3); ValueError otherwise."""
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"frames must have shape (F, H, W, 3), got {frames.shape}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames must have at least one frame of at least 1x1 pixels, got {frames.shape}")
    return np.ascontiguousarray(frames)


def _check_fps(fps: int) -> int:
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 240:
        raise ValueError(f"fps must be an integer in [1, 240], got {fps!r}")
    return fps


# -- ffmpeg ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of imageio-ffmpeg's bundled ffmpeg binary."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


@functools.lru_cache(maxsize=1)
def ffmpeg_version_line() -> str:
    """The first line of ``ffmpeg -version`` (its build changes MP4 bytes)."""
    proc = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, check=False,
        timeout=60, env=_FFMPEG_ENV,
    )
    lines = proc.stdout.splitlines()
    if not lines:
        return f"unknown (exit {proc.returncode})"
    return lines[0].split(" Copyright")[0].strip()


#: ffmpeg runs with a fixed, minimal environment: variables such as FFREPORT or AV_LOG_FORCE_*
#: from the caller's environment must not change what it does.
_FFMPEG_ENV = {"LC_ALL": "C"}


def _even_padded(frames: np.ndarray) -> np.ndarray:
    """Pad an odd height/width by replicating the last row/column (yuv420p needs even sides)."""
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if not (pad_h or pad_w):
        return frames
    return np.ascontiguousarray(np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge"))


def ffmpeg_command(width: int, height: int, fps: int, out_path: Path) -> list[str]:
    """The full ffmpeg command line that encodes raw RGB frames from stdin to ``out_path``."""
    return [
        ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps),
        "-i", "pipe:0",
        *ENCODE_ARGS,
        str(out_path),
    ]


def encode_mp4(frames: np.ndarray, fps: int, out_path: Path) -> tuple[int, int]:
    """Encode uint8 frames (F, H, W, 3) to an H.264 MP4 at ``out_path`` (written in place, then
    fsynced; callers write into a temporary location). Returns the encoded (width, height)."""
    frames = _even_padded(check_frames(frames))
    _check_fps(fps)
    f, h, w, _ = frames.shape
    cmd = ffmpeg_command(w, h, fps, out_path)
    timeout_seconds = max(FFMPEG_MIN_TIMEOUT_SECONDS, FFMPEG_SECONDS_PER_FRAME * f)
    try:
        proc = subprocess.run(
            cmd, input=frames.data.cast("B"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_FFMPEG_ENV, timeout=timeout_seconds, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"ffmpeg could not encode {out_path.name}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise StorageError(f"ffmpeg failed (exit {proc.returncode}) encoding {out_path.name}: {tail}")
    _fsync_file(out_path)
    return w, h


# -- PNG ---------------------------------------------------------------------------------------


def png_bytes(frame: np.ndarray) -> bytes:
    """One (H, W, 3) uint8 frame as PNG bytes: fixed zlib level, no metadata chunks."""
    from PIL import Image

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a PNG frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(
        buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL
    )
    return buf.getvalue()


def poster_index(num_frames: int) -> int:
    """Which frame is the poster: the middle one."""
    return num_frames // 2


# -- files -------------------------------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, fsync,
    ``os.replace``, fsync of the directory. A reader sees the old file or the new one."""
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _write_new_file(path: Path, data: bytes) -> None:
    """Write and fsync a new file (inside a temporary directory that is renamed as a whole)."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


# -- the store ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredOutput:
    """Where one render's outputs are and what they hash to."""

    output_id: str
    #: The MP4.
    path: Path
    uri: str
    poster_path: Path
    #: PNG frames (``frames/00000.png`` ...), or None for output_format "mp4".
    frames_dir: Path | None
    sidecar_path: Path
    file_sha256: str
    frames_sha256: str
    size_bytes: int
    #: (F, H, W, 3) of the frames (the MP4 may be padded to even sides: ``video_width/height``).
    shape: tuple[int, int, int, int]
    fps: int
    output_format: str
    #: Seconds this call spent encoding and writing (0.0 when the output already existed).
    encode_seconds: float
    #: True when the directory already existed (written earlier or by a concurrent writer).
    reused: bool


class OutputStore:
    """The content-addressed outputs directory (see the module docstring for the layout)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------
    def _real_root(self) -> Path:
        return self.root.resolve()

    def _inside(self, path: Path) -> Path:
        """``path`` resolved; StorageError if it leaves the root (a symlink escape)."""
        real_root = self._real_root()
        real = path.resolve()
        if real != real_root and not real.is_relative_to(real_root):
            raise StorageError(f"refusing {path}: it resolves to {real}, outside the output root {real_root}")
        return real

    def dir_for(self, output_id: str) -> Path:
        """The directory of ``output_id`` (a sha256 hex string; nothing else is accepted)."""
        if not isinstance(output_id, str) or not _HEX64.match(output_id):
            raise ValueError("output_id must be a lowercase sha256 hex string")
        return self.root / output_id[:2] / output_id

    # -- writing --------------------------------------------------------------------------------
    def put_render(
        self, frames: np.ndarray, fps: int, job_key: str, output_format: str = "mp4"
    ) -> StoredOutput:
        """Store one render's outputs; idempotent, safe to call concurrently with the same frames.

        ``job_key`` (sha256 hex) is recorded in the sidecar of the writer that created the
        directory; prompts are never written here (they live in the ledger).
        """
        started = time.perf_counter()
        frames = check_frames(frames)
        _check_fps(fps)
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
        if not isinstance(job_key, str) or not _HEX64.match(job_key):
            raise ValueError("job_key must be a lowercase sha256 hex string")
        fhash = frames_sha256(frames)
        output_id = output_id_of(fhash, fps, output_format)
        final = self.dir_for(output_id)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {final.parent}: {exc}") from exc
        self._inside(final.parent)
        if final.exists():
            return self._existing(final, output_id, fhash)

        tmp = final.parent / f"{TEMP_PREFIX}{output_id[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            self._inside(tmp)
            sidecar = self._write_all(tmp, frames, fps, job_key, output_format, fhash, output_id)
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():  # a concurrent writer won the race: keep its directory
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._existing(final, output_id, fhash)
                raise
            _fsync_dir(final.parent)
        except StorageError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(f"writing output {output_id} failed: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self._from_sidecar(final, sidecar, encode_seconds=time.perf_counter() - started, reused=False)

    def _write_all(
        self, directory: Path, frames: np.ndarray, fps: int, job_key: str, output_format: str,
        fhash: str, output_id: str,
    ) -> dict[str, Any]:
        video = directory / VIDEO_FILENAME
        video_w, video_h = encode_mp4(frames, fps, video)
        index = poster_index(frames.shape[0])
        poster = png_bytes(frames[index])
        _write_new_file(directory / POSTER_FILENAME, poster)
        frames_meta: dict[str, Any] | None = None
        if output_format == "mp4+frames":
            fdir = directory / FRAMES_DIRNAME
            fdir.mkdir()
            for i in range(frames.shape[0]):
                _write_new_file(fdir / f"{i:05d}.png", png_bytes(frames[i]))
            _fsync_dir(fdir)
            frames_meta = {"dir": FRAMES_DIRNAME, "count": int(frames.shape[0]), "pattern": "%05d.png"}
        f, h, w, c = (int(n) for n in frames.shape)
        sidecar: dict[str, Any] = {
            "format": SIDECAR_FORMAT,
            "output_id": output_id,
            "job_key": job_key,
            "encode_profile": ENCODE_PROFILE,
            "output_format": output_format,
            "frames_sha256": fhash,
            "shape": [f, h, w, c],
            "dtype": "uint8",
            "fps": fps,
            "video": {
                "file": VIDEO_FILENAME,
                "sha256": file_sha256(video),
                "size_bytes": video.stat().st_size,
                "codec": "h264",
                "pix_fmt": "yuv420p",
                "width": video_w,
                "height": video_h,
                "ffmpeg": ffmpeg_version_line(),
                "ffmpeg_args": list(ENCODE_ARGS),
            },
            "poster": {
                "file": POSTER_FILENAME,
                "frame_index": index,
                "sha256": hashlib.sha256(poster).hexdigest(),
            },
            "frames": frames_meta,
        }
        data = (json.dumps(sidecar, sort_keys=True, indent=1) + "\n").encode("utf-8")
        _write_new_file(directory / SIDECAR_FILENAME, data)
        return sidecar

    # -- reading --------------------------------------------------------------------------------
    def _read_sidecar(self, directory: Path) -> dict[str, Any]:
        path = self._inside(directory / SIDECAR_FILENAME)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StorageError(f"output directory {directory} has no readable sidecar: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise StorageError(f"output directory {directory} has an unknown sidecar format")
        return data

    def _from_sidecar(
        self, directory: Path, sidecar: dict[str, Any], *, encode_seconds: float, reused: bool
    ) -> StoredOutput:
        try:
            video = directory / str(sidecar["video"]["file"])
            frames_meta = sidecar.get("frames")
            shape = tuple(int(n) for n in sidecar["shape"])
            if len(shape) != 4:
                raise ValueError("shape must have 4 entries")
            return StoredOutput(
                output_id=str(sidecar["output_id"]),
                path=video,
                uri=video.resolve().as_uri(),
                poster_path=directory / str(sidecar["poster"]["file"]),
                frames_dir=directory / str(frames_meta["dir"]) if frames_meta else None,
                sidecar_path=directory / SIDECAR_FILENAME,
                file_sha256=str(sidecar["video"]["sha256"]),
                frames_sha256=str(sidecar["frames_sha256"]),
                size_bytes=int(sidecar["video"]["size_bytes"]),
                shape=(shape[0], shape[1], shape[2], shape[3]),
                fps=int(sidecar["fps"]),
                output_format=str(sidecar["output_format"]),
                encode_seconds=encode_seconds,
                reused=reused,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"output directory {directory} has a malformed sidecar: {exc}") from exc

    def _existing(self, final: Path, output_id: str, fhash: str) -> StoredOutput:
        """The directory already there: check it is the same output and intact, and return it."""
        self._inside(final)
        sidecar = self._read_sidecar(final)
        stored = self._from_sidecar(final, sidecar, encode_seconds=0.0, reused=True)
        if stored.output_id != output_id or stored.frames_sha256 != fhash:
            raise StorageError(f"output directory {final} holds another output ({stored.output_id})")
        if not self.verify(stored):
            raise StorageError(f"output directory {final} is corrupt (its MP4 does not match its sidecar); "
                               "remove it and render again")
        return stored

    def get(self, output_id: str) -> StoredOutput | None:
        """The stored output with this id, or None when absent."""
        directory = self.dir_for(output_id)
        if not directory.exists():
            return None
        self._inside(directory)
        return self._from_sidecar(directory, self._read_sidecar(directory), encode_seconds=0.0, reused=True)

    def verify(self, stored: StoredOutput) -> bool:
        """True when the MP4 exists under the root and its sha256 and size match the record, and the
        poster and (if any) PNG frames exist. StorageError if the path escapes the root."""
        path = self._inside(stored.path)
        try:
            if path.stat().st_size != stored.size_bytes or file_sha256(path) != stored.file_sha256:
                return False
            if not self._inside(stored.poster_path).is_file():
                return False
            if stored.frames_dir is not None:
                frames_dir = self._inside(stored.frames_dir)
                if not all((frames_dir / f"{i:05d}.png").is_file() for i in range(stored.shape[0])):
                    return False
        except OSError:
            return False
        return True

    def clean_temp(self, older_than_seconds: float = 3600.0) -> int:
        """Remove temporary directories/files left by writers that died (older than the given age).
        Returns how many were removed."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for parent in self.root.iterdir():
            if not parent.is_dir() or parent.is_symlink():
                continue
            for entry in parent.iterdir():
                if not entry.name.startswith(TEMP_PREFIX):
                    continue
                try:
                    if entry.lstat().st_mtime > cutoff:
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed += 1
                except OSError:
                    continue
        return removed
