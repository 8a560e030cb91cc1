"""Turning frames into stored files: the frames hash, a bit-exact MP4, a poster PNG, PNG frames.

Only writers (workers, ``farm render``) import this module (it needs numpy and ffmpeg); readers
use :mod:`farm.store.local`.

* :func:`frames_sha256` — sha256 over a small header (shape, dtype) and the C-contiguous bytes of
  the decoded uint8 frames. This is the *reproducibility identity* of a render: the same spec on
  the same environment must give the same value. The render engine imports it from here.
* The MP4 is H.264 (libx264), yuv420p, BT.709 limited range, encoded by imageio-ffmpeg's bundled
  ffmpeg with one thread everywhere and ffmpeg's bitexact flags, so the same frames give the same
  bytes on any CPU count or affinity with one ffmpeg build (see :data:`ENCODE_ARGS`). Raw RGB
  frames are piped to ffmpeg's stdin; nothing but the output file touches the disk. Frames with an
  odd width or height are padded by one replicated row/column for the MP4 (4:2:0 chroma needs even
  sides); the poster and PNG frames keep the exact size.
* The poster is the middle frame (index ``F // 2``): the first frame of a text-to-video render is
  often the least resolved, the middle one is the most representative. PNGs are written by Pillow
  with fixed options and no metadata chunks (no time, no text).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from farm.errors import StorageError
from farm.store.files import file_sha256, fsync_dir, fsync_file, write_new_file
from farm.store.layout import (
    ENCODE_PROFILE,
    FRAMES_DIRNAME,
    POSTER_FILENAME,
    SIDECAR_FILENAME,
    SIDECAR_FORMAT,
    VIDEO_FILENAME,
)

#: Domain tag of :func:`frames_sha256`; changing it changes every frames hash.
FRAMES_HASH_DOMAIN = "farm.frames/1"
#: zlib level for PNGs (fixed so the bytes are stable with one zlib build).
PNG_COMPRESS_LEVEL = 6
#: How long ffmpeg may take per frame before the encode is abandoned (generous; 4K frames included).
FFMPEG_SECONDS_PER_FRAME = 10.0
FFMPEG_MIN_TIMEOUT_S = 60.0

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

#: ffmpeg runs with a fixed, minimal environment: variables such as FFREPORT or AV_LOG_FORCE_*
#: from the caller's environment must not change what it does.
_FFMPEG_ENV = {"LC_ALL": "C"}


# -- hashes and checks ---------------------------------------------------------------------------


def frames_sha256(frames: np.ndarray) -> str:
    """The reproducibility identity of a render.

    sha256 over ``farm.frames/1``, the shape and the dtype, then the frames' C-contiguous bytes.
    Equal frames give equal hashes on any machine.
    """
    arr = np.ascontiguousarray(frames)
    shape = "x".join(str(n) for n in arr.shape)
    header = f"{FRAMES_HASH_DOMAIN}\nshape={shape}\ndtype={arr.dtype.str}\n".encode("ascii")
    digest = hashlib.sha256(header)
    if arr.size:
        digest.update(arr.data.cast("B"))
    return digest.hexdigest()


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


def check_fps(fps: int) -> int:
    """``fps`` if it is an integer in [1, 240], else ValueError."""
    if isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= 240:
        raise ValueError(f"fps must be an integer in [1, 240], got {fps!r}")
    return fps


# -- ffmpeg --------------------------------------------------------------------------------------


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
    """Encode uint8 frames (F, H, W, 3) to an H.264 MP4 at ``out_path``.

    Written in place, then fsynced; callers write into a temporary location. Returns the
    encoded (width, height).
    """
    frames = _even_padded(check_frames(frames))
    check_fps(fps)
    f, h, w, _ = frames.shape
    cmd = ffmpeg_command(w, h, fps, out_path)
    timeout_s = max(FFMPEG_MIN_TIMEOUT_S, FFMPEG_SECONDS_PER_FRAME * f)
    try:
        proc = subprocess.run(
            cmd, input=frames.data.cast("B"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_FFMPEG_ENV, timeout=timeout_s, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"ffmpeg could not encode {out_path.name}: {exc}") from exc
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
        raise StorageError(f"ffmpeg failed (exit {proc.returncode}) encoding {out_path.name}: {tail}")
    fsync_file(out_path)
    return w, h


# -- PNG -----------------------------------------------------------------------------------------


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


# -- one output directory ------------------------------------------------------------------------


def write_render_files(
    directory: Path, frames: np.ndarray, fps: int, *, job_key: str, output_format: str, frames_hash: str,
    output_id: str,
) -> dict[str, Any]:
    """Write the MP4, the poster, the PNG frames (``mp4+frames``) and the sidecar into the new, empty ``directory``.

    Return the sidecar.
    """
    video = directory / VIDEO_FILENAME
    video_w, video_h = encode_mp4(frames, fps, video)
    index = poster_index(frames.shape[0])
    poster = png_bytes(frames[index])
    write_new_file(directory / POSTER_FILENAME, poster)
    frames_meta: dict[str, Any] | None = None
    if output_format == "mp4+frames":
        fdir = directory / FRAMES_DIRNAME
        fdir.mkdir()
        for i in range(frames.shape[0]):
            write_new_file(fdir / f"{i:05d}.png", png_bytes(frames[i]))
        fsync_dir(fdir)
        frames_meta = {"dir": FRAMES_DIRNAME, "count": int(frames.shape[0]), "pattern": "%05d.png"}
    f, h, w, c = (int(n) for n in frames.shape)
    sidecar: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "output_id": output_id,
        "job_key": job_key,
        "encode_profile": ENCODE_PROFILE,
        "output_format": output_format,
        "frames_sha256": frames_hash,
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
    write_new_file(directory / SIDECAR_FILENAME, data)
    return sidecar
