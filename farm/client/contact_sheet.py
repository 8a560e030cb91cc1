"""A batch at a glance: a contact sheet (one PNG) and a self-contained HTML report.

* :func:`contact_sheet_png` — a grid of the batch's posters in manifest order, each tile labelled
  with its prompt (wrapped, truncated to fit) and its seed; a job without a poster (queued,
  running, failed, cancelled, or its file missing) is a grey tile with its status in the label. A
  title line names the batch and counts its jobs by status.
* :func:`html_report` — one HTML file: the posters embedded as ``data:image/png`` URIs (downscaled
  to :data:`HTML_POSTER_PX`), prompt, seed, status and parameters per tile, every text escaped, no
  external URL at all (a Content-Security-Policy that allows only inline styles and data: images),
  readable offline.

``farm results BATCH --format sheet|html --output FILE`` writes them; the review room serves them.

Posters are read through the output store (:meth:`~farm.store.StoreBackend.copy_to`: a file store
or an s3 bucket, by the job's recorded output URI) into one private temporary file, one poster at a
time; no path is ever built from prompt text. Memory stays bounded: at most :data:`MAX_TILES`
tiles (the title says when a batch has more), each poster decoded, shrunk and dropped before the
next one, posters over :data:`MAX_POSTER_BYTES` skipped.

Producer code: Pillow and the standard library only (no numpy, no torch).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from farm.errors import OutputMissing

if TYPE_CHECKING:
    from farm.client.core import Client
    from farm.ledger.records import BatchRecord, JobRecord
    from farm.store import StoreBackend

#: Most tiles one sheet (or report) shows: the first ones in manifest order.
MAX_TILES = 200
#: A poster file larger than this is not read (a frame's PNG is far smaller).
MAX_POSTER_BYTES = 64 * 1024 * 1024
#: The square each poster is fitted into on the sheet.
POSTER_PX = 160
#: Tiles per row, at most.
MAX_COLUMNS = 8
PAD_PX = 8
FONT_PX = 11
LINE_PX = 14
#: Label lines under each poster: the prompt (wrapped) and one line of seed and status.
PROMPT_LINES = 2
LABEL_PX = (PROMPT_LINES + 1) * LINE_PX + 6
TITLE_FONT_PX = 15
TITLE_LINE_PX = 20
TITLE_PX = 2 * TITLE_LINE_PX + PAD_PX
MIN_WIDTH_PX = 560
#: Longest side of a poster embedded in the HTML report.
HTML_POSTER_PX = 320

WHITE = (255, 255, 255)
INK = (20, 20, 20)
#: Behind a poster that does not fill its square.
LETTERBOX = (24, 24, 24)
#: A tile without a poster.
NO_POSTER = (128, 128, 128)
#: The parameters a report shows per tile (from the job's canonical params).
SHOWN_PARAMS: tuple[str, ...] = (
    "model", "preset", "width", "height", "num_frames", "fps", "steps", "guidance_scale", "guidance_scale_2",
    "boundary_ratio", "flow_shift", "sampler", "cache_threshold",
)


@dataclass(frozen=True)
class Tile:
    """One job on a sheet: what its label says, and its poster's PNG bytes (None: a grey tile)."""

    job_id: str
    prompt: str
    seed: int
    status: str
    poster: bytes | None = None
    #: Why there is no poster (the status, or "poster missing"); empty when there is one.
    note: str = ""
    index: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    #: Review labels (the seed library's), when the ledger has them.
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class SheetLayout:
    """Where everything goes on a sheet of ``tiles`` tiles (of a batch of ``total`` jobs)."""

    total: int
    tiles: int
    columns: int
    rows: int

    @property
    def capped(self) -> bool:
        """True when the batch has more jobs than the sheet shows."""
        return self.total > self.tiles

    @property
    def cell_w(self) -> int:
        """Horizontal distance between two tiles."""
        return POSTER_PX + PAD_PX

    @property
    def cell_h(self) -> int:
        """Vertical distance between two tiles."""
        return POSTER_PX + LABEL_PX + PAD_PX

    @property
    def width(self) -> int:
        """The sheet's width in pixels."""
        return max(MIN_WIDTH_PX, PAD_PX + self.columns * self.cell_w)

    @property
    def height(self) -> int:
        """The sheet's height in pixels."""
        return TITLE_PX + PAD_PX + self.rows * self.cell_h

    def poster_box(self, index: int) -> tuple[int, int, int, int]:
        """The square (left, top, right, bottom) of tile ``index``'s poster."""
        if not 0 <= index < self.tiles:
            raise IndexError(f"tile {index} is not on a sheet of {self.tiles}")
        row, col = divmod(index, self.columns)
        left, top = PAD_PX + col * self.cell_w, TITLE_PX + PAD_PX + row * self.cell_h
        return left, top, left + POSTER_PX, top + POSTER_PX

    def label_box(self, index: int) -> tuple[int, int, int, int]:
        """The label area under tile ``index``'s poster."""
        left, _, right, bottom = self.poster_box(index)
        return left, bottom, right, bottom + LABEL_PX


def sheet_layout(total: int, max_tiles: int = MAX_TILES) -> SheetLayout:
    """The layout of a sheet for a batch of ``total`` jobs (at most ``max_tiles`` of them shown)."""
    tiles = max(0, min(total, max_tiles))
    columns = max(1, min(MAX_COLUMNS, tiles))
    return SheetLayout(total, tiles, columns, math.ceil(tiles / columns))


# -- text --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font at ``size`` pixels."""
    return ImageFont.load_default(size=size)


def _fits(text: str, face: Any, width: int) -> bool:
    return float(face.getlength(text)) <= width


def _cut(word: str, face: Any, width: int) -> int:
    """How many leading characters of ``word`` fit in ``width`` (at least one)."""
    n = len(word)
    while n > 1 and not _fits(word[:n], face, width):
        n -= 1
    return n


def truncate(text: str, face: Any, width: int, ellipsis: str = "...") -> str:
    """``text`` cut to fit ``width``, ending in ``ellipsis`` when it was cut."""
    if _fits(text, face, width):
        return text
    while text and not _fits(text + ellipsis, face, width):
        text = text[:-1]
    return text.rstrip() + ellipsis


def wrap(text: str, face: Any, width: int, max_lines: int) -> list[str]:
    """``text`` wrapped on words into at most ``max_lines`` lines of ``width`` pixels (the last one truncated)."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if _fits(candidate, face, width):
            current = candidate
            continue
        if current:
            lines.append(current)
        while not _fits(word, face, width):  # a word wider than a line: cut it
            n = _cut(word, face, width)
            lines.append(word[:n])
            word = word[n:]
        current = word
        if len(lines) > max_lines:
            break
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = truncate(lines[-1] + " ...", face, width)
    return lines


def status_counts(statuses: Iterable[str]) -> str:
    """``3 succeeded, 1 failed`` (most common first)."""
    counts = Counter(statuses)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def title_lines(name: str, batch_id: str, layout: SheetLayout, counts: str) -> tuple[str, str]:
    """The sheet's two title lines: the batch, then its job counts (and the cap, when it applies)."""
    first = f"batch {name} ({batch_id})" if name else f"batch {batch_id}"
    second = f"{layout.total} job(s): {counts}" if counts else f"{layout.total} job(s)"
    if layout.capped:
        second += f"; showing the first {layout.tiles} of {layout.total} (manifest order)"
    return first, second


def label_line(tile: Tile) -> str:
    """The line under a tile's prompt: its index and seed, and why it has no poster (its status) if it has none."""
    where = f"#{tile.index}  " if tile.index is not None else ""
    why = tile.note or (tile.status if tile.poster is None else "")
    return f"{where}seed {tile.seed}  {why}".rstrip()


# -- posters -----------------------------------------------------------------------------------


def open_poster(data: bytes) -> Image.Image | None:
    """A poster's PNG decoded to RGB (None: it is not a readable image)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def fit(img: Image.Image, side: int, *, enlarge: bool = True) -> Image.Image:
    """``img`` scaled to fit a ``side`` square, keeping its aspect (small ones enlarged with sharp pixels)."""
    scale = side / max(img.width, img.height)
    if scale >= 1 and not enlarge:
        return img
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if scale >= 1:
        return img.resize(size, Image.Resampling.NEAREST)
    return img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _read_poster(store: StoreBackend, job: JobRecord, dest: Path) -> tuple[bytes | None, str]:
    """A succeeded job's poster bytes from the store, or None and why there is none."""
    status = job.status.value
    if status != "succeeded" or not job.output_uri:
        return None, status
    try:
        store.copy_to(job.output_uri, dest, poster=True)
    except OutputMissing:
        return None, "poster missing"
    try:
        if dest.stat().st_size > MAX_POSTER_BYTES:
            return None, "poster too large"
        return dest.read_bytes(), ""
    finally:
        dest.unlink(missing_ok=True)


def tile_of(job: JobRecord, poster: bytes | None, note: str) -> Tile:
    """The tile of a job."""
    return Tile(job_id=job.id, prompt=job.prompt, seed=job.seed, status=job.status.value, poster=poster, note=note,
                index=job.batch_index, params=dict(job.params), tags=dict(job.tags), error=job.error_message,
                labels=tuple(getattr(job, "labels", None) or ()))


def iter_tiles(store: StoreBackend, jobs: Sequence[JobRecord]) -> Iterator[Tile]:
    """The jobs' tiles, each poster read from the store when its tile is reached (one at a time)."""
    with tempfile.TemporaryDirectory(prefix="farm-posters-") as tmp:
        dest = Path(tmp) / "poster.png"  # a fixed name: nothing from the job goes into a path
        for job in jobs:
            poster, note = _read_poster(store, job, dest)
            yield tile_of(job, poster, note)


# -- the sheet ---------------------------------------------------------------------------------


def _draw_tile(sheet: Image.Image, draw: ImageDraw.ImageDraw, layout: SheetLayout, index: int, tile: Tile) -> None:
    left, top, right, bottom = layout.poster_box(index)
    img = open_poster(tile.poster) if tile.poster is not None else None
    if img is None:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=NO_POSTER)
        tile = tile if tile.poster is None else replace(tile, note="poster unreadable")
    else:
        draw.rectangle((left, top, right - 1, bottom - 1), fill=LETTERBOX)
        shown = fit(img, POSTER_PX)
        sheet.paste(shown, (left + (POSTER_PX - shown.width) // 2, top + (POSTER_PX - shown.height) // 2))
        img.close()
    face = font(FONT_PX)
    lx, ly, lr, _ = layout.label_box(index)
    lines = wrap(tile.prompt, face, lr - lx, PROMPT_LINES)
    for n, line in enumerate(lines):
        draw.text((lx, ly + 3 + n * LINE_PX), line, fill=INK, font=face)
    draw.text((lx, ly + 3 + PROMPT_LINES * LINE_PX), truncate(label_line(tile), face, lr - lx), fill=INK, font=face)


def render_sheet(title: tuple[str, str], layout: SheetLayout, tiles: Iterable[Tile]) -> bytes:
    """The PNG of a sheet: ``title``, then the first ``layout.tiles`` of ``tiles`` in the grid."""
    sheet = Image.new("RGB", (layout.width, layout.height), WHITE)
    draw = ImageDraw.Draw(sheet)
    face = font(TITLE_FONT_PX)
    for n, line in enumerate(title):
        draw.text((PAD_PX, PAD_PX // 2 + n * TITLE_LINE_PX), truncate(line, face, layout.width - 2 * PAD_PX),
                  fill=INK, font=face)
    for index, tile in enumerate(tiles):
        if index >= layout.tiles:
            break
        _draw_tile(sheet, draw, layout, index, tile)
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue()


def _batch_jobs(client: Client, batch_id: str) -> tuple[BatchRecord, list[JobRecord]]:
    batch = client.get_batch(batch_id)  # checks the id; BatchNotFound for anything else
    return batch, client.ledger.batch_jobs(batch.id)


def contact_sheet_png(client: Client, batch_id: str) -> bytes:
    """The contact sheet of a batch as PNG bytes (see the module docstring)."""
    batch, jobs = _batch_jobs(client, batch_id)
    layout = sheet_layout(len(jobs))
    title = title_lines(batch.name, batch.id, layout, status_counts(j.status.value for j in jobs))
    return render_sheet(title, layout, iter_tiles(client.store, jobs[:layout.tiles]))


# -- the HTML report ---------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #141414; background: #fff; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; word-break: break-all; }
.counts { margin: 0 0 1rem; color: #444; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; background: #fafafa; }
figure img, .noposter { display: block; width: 100%; aspect-ratio: 1 / 1; object-fit: contain;
  background: #181818; image-rendering: pixelated; }
.noposter { background: #808080; color: #fff; display: flex; align-items: center; justify-content: center;
  font-weight: bold; }
figcaption { padding: .5rem .6rem .7rem; font-size: .85rem; }
.prompt { margin: 0 0 .4rem; white-space: pre-wrap; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .6rem; margin: 0; }
dt { color: #666; } dd { margin: 0; overflow-wrap: anywhere; }
.error { color: #a00; }
"""
#: Nothing may load: inline styles and data: images only (no scripts, no fetches).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def poster_data_uri(data: bytes, side: int = HTML_POSTER_PX) -> str | None:
    """A poster as a ``data:image/png;base64,...`` URI, shrunk to ``side`` (None: not a readable image)."""
    img = open_poster(data)
    if img is None:
        return None
    out = io.BytesIO()
    fit(img, side, enlarge=False).save(out, format="PNG")
    img.close()
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def _details(tile: Tile) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [("seed", tile.seed), ("status", tile.note or tile.status), ("job", tile.job_id)]
    if tile.index is not None:
        rows.insert(0, ("#", tile.index))
    rows.extend((k, tile.params[k]) for k in SHOWN_PARAMS if tile.params.get(k) is not None)
    rows.extend((f"tag {k}", v) for k, v in sorted(tile.tags.items()))
    if tile.labels:
        rows.append(("labels", ", ".join(tile.labels)))
    return rows


def html_tile(tile: Tile) -> str:
    """One tile of the report: the embedded poster (or a grey box with the status), the prompt, the details."""
    uri = poster_data_uri(tile.poster) if tile.poster is not None else None
    if uri is not None:
        picture = f'<img src="{uri}" alt="poster of job {_e(tile.job_id)}">'
    else:
        note = (tile.note or tile.status) if tile.poster is None else "poster unreadable"
        picture = f'<div class="noposter">{_e(note)}</div>'
    details = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in _details(tile))
    error = f'<p class="error">{_e(tile.error)}</p>' if tile.error else ""
    return (f'<figure id="job-{_e(tile.job_id)}">{picture}<figcaption><p class="prompt">{_e(tile.prompt)}</p>'
            f"<dl>{details}</dl>{error}</figcaption></figure>\n")


def render_html(title: tuple[str, str], tiles: Iterable[Tile]) -> str:
    """The report's HTML: ``title`` (heading, counts), then one figure per tile."""
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_e(title[0])}</title>\n<style>{_STYLE}</style></head>\n<body>\n"
            f'<h1>{_e(title[0])}</h1>\n<p class="counts">{_e(title[1])}</p>\n<div class="grid">\n')
    parts = [head]
    parts.extend(html_tile(t) for t in tiles)
    parts.append("</div>\n</body></html>\n")
    return "".join(parts)


def html_report(client: Client, batch_id: str) -> str:
    """The batch's report as one self-contained HTML document (see the module docstring)."""
    batch, jobs = _batch_jobs(client, batch_id)
    layout = sheet_layout(len(jobs))
    title = title_lines(batch.name, batch.id, layout, status_counts(j.status.value for j in jobs))
    return render_html(title, iter_tiles(client.store, jobs[:layout.tiles]))
