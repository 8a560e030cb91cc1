"""The contact sheet's layout and drawing, and the HTML report's tiles (:mod:`farm.client.contact_sheet`).

Synthetic posters (solid colours) in synthetic tiles, no services: each poster lands in its own
square, a tile without a poster is uniformly grey, labels and the title are drawn, big batches are
capped (and say so), prompts wrap and truncate to fit; the HTML embeds posters as data: URIs and
escapes every text. (A real rendered batch: tests/integration/producers/test_contact_sheet.py.)
"""

from __future__ import annotations

import base64
import io
import itertools
import re

import pytest
from PIL import Image

from farm.client.contact_sheet import (
    FONT_PX,
    LABEL_PX,
    LETTERBOX,
    MAX_COLUMNS,
    MAX_TILES,
    MIN_WIDTH_PX,
    NO_POSTER,
    POSTER_PX,
    PROMPT_LINES,
    TITLE_PX,
    Tile,
    font,
    label_line,
    render_html,
    render_sheet,
    sheet_layout,
    title_lines,
    wrap,
)

RED, BLUE = (220, 30, 30), (30, 40, 200)


def png(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def colours(img: Image.Image, box: tuple[int, int, int, int]) -> set[tuple[int, int, int]]:
    return {c for _, c in img.crop(box).getcolors(maxcolors=1 << 20)}


def has_ink(img: Image.Image, box: tuple[int, int, int, int]) -> bool:
    """Some dark pixel (drawn text) in ``box``."""
    return min(sum(c) for c in colours(img, box)) < 3 * 120


@pytest.mark.parametrize(("total", "columns", "rows", "tiles"), [
    (1, 1, 1, 1), (8, 8, 1, 8), (9, 8, 2, 9), (17, 8, 3, 17), (MAX_TILES + 250, MAX_COLUMNS, 25, MAX_TILES),
])
def test_the_grid_fits_the_batch_and_is_capped(total: int, columns: int, rows: int, tiles: int) -> None:
    layout = sheet_layout(total)
    assert (layout.columns, layout.rows, layout.tiles, layout.capped) == (columns, rows, tiles, total > MAX_TILES)
    assert layout.width >= MIN_WIDTH_PX and layout.height > TITLE_PX
    boxes = [layout.poster_box(i) for i in range(layout.tiles)]
    assert len(set(boxes)) == len(boxes)
    for left, top, right, bottom in boxes:
        assert (right - left, bottom - top) == (POSTER_PX, POSTER_PX)
        assert left >= 0 and right <= layout.width and top >= TITLE_PX and bottom <= layout.height
    # tiles do not overlap: in row order, each starts right of the previous one or below its row
    for (_, t1, r1, b1), (l2, t2, _, _) in itertools.pairwise(boxes):
        assert t2 >= b1 + LABEL_PX or (t2 == t1 and l2 >= r1)
    with pytest.raises(IndexError):
        layout.poster_box(layout.tiles)


def test_a_capped_sheet_says_so_in_its_title() -> None:
    first, second = title_lines("day", "b-1", sheet_layout(450), "450 succeeded")
    assert first == "batch day (b-1)"
    assert f"showing the first {MAX_TILES} of 450" in second
    assert "showing" not in title_lines("day", "b-1", sheet_layout(3), "3 succeeded")[1]


def test_posters_land_in_their_squares_and_missing_ones_are_grey() -> None:
    tiles = [
        Tile("j0", "a red square", 1, "succeeded", poster=png(RED), index=0),
        Tile("j1", "a wide blue poster", 2, "succeeded", poster=png(BLUE, (64, 32)), index=1),
        Tile("j2", "never rendered", 3, "cancelled", note="cancelled", index=2),
        Tile("j3", "broken file", 4, "succeeded", poster=b"not a png", index=3),
    ]
    layout = sheet_layout(len(tiles))
    sheet = Image.open(io.BytesIO(render_sheet(("batch t", "4 job(s)"), layout, tiles)))
    assert sheet.format == "PNG" and sheet.size == (layout.width, layout.height)
    sheet = sheet.convert("RGB")
    assert colours(sheet, layout.poster_box(0)) == {RED}  # 32 px enlarged 5x: the whole square
    left, top, right, bottom = layout.poster_box(1)
    assert colours(sheet, (left, top + 40, right, bottom - 40)) == {BLUE}  # 2:1 in a square: letterboxed
    assert colours(sheet, (left, top, right, top + 40)) == {LETTERBOX}
    assert colours(sheet, layout.poster_box(2)) == {NO_POSTER}
    assert colours(sheet, layout.poster_box(3)) == {NO_POSTER}  # unreadable: grey too
    for index in range(len(tiles)):
        assert has_ink(sheet, layout.label_box(index)), index
    # the seed on every label; the status only where there is no poster
    assert [label_line(t) for t in tiles[:3]] == ["#0  seed 1", "#1  seed 2", "#2  seed 3  cancelled"]
    assert has_ink(sheet, (0, 0, layout.width, TITLE_PX))


def test_only_the_first_tiles_are_drawn_on_a_capped_sheet() -> None:
    layout = sheet_layout(5, max_tiles=2)
    drawn = [Tile(f"j{i}", "x", i, "succeeded", poster=png(RED)) for i in range(5)]
    sheet = Image.open(io.BytesIO(render_sheet(("t", "5 job(s)"), layout, iter(drawn)))).convert("RGB")
    assert sheet.size == (layout.width, layout.height) and layout.tiles == 2
    assert colours(sheet, layout.poster_box(1)) == {RED}


def test_prompts_wrap_and_truncate_to_the_tile() -> None:
    face = font(FONT_PX)
    short = wrap("a fox", face, POSTER_PX, PROMPT_LINES)
    assert short == ["a fox"]
    long = "a very long prompt about a red fox running through fresh snow at dawn " * 8
    lines = wrap(long, face, POSTER_PX, PROMPT_LINES)
    assert len(lines) == PROMPT_LINES and lines[-1].endswith("...")
    assert all(face.getlength(line) <= POSTER_PX for line in lines)
    assert " ".join(lines).startswith("a very long prompt")
    word = wrap("x" * 300, face, POSTER_PX, PROMPT_LINES)  # one word wider than a line is cut
    assert len(word) == PROMPT_LINES and all(face.getlength(line) <= POSTER_PX for line in word)


def test_the_html_embeds_posters_and_escapes_every_text() -> None:
    tiles = [
        Tile("j0", "<script>alert(1)</script> a fox", 7, "succeeded", poster=png(RED), index=0,
             params={"model": "tiny", "width": 32, "steps": 8}, tags={"scene": "<b>1</b>"}, labels=("keeper",)),
        Tile("j1", 'a "quoted" & <i>', 8, "failed", note="failed", index=1, error="boom <img src=x onerror=1>"),
    ]
    page = render_html(("batch <day>", "2 job(s)"), tiles)
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 1
    poster = Image.open(io.BytesIO(base64.b64decode(uris[0])))
    assert poster.size == (32, 32) and poster.convert("RGB").getpixel((5, 5)) == RED
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;1&lt;/b&gt;" in page and "&lt;img src=x onerror=1&gt;" in page
    assert "a &quot;quoted&quot; &amp; &lt;i&gt;" in page and "batch &lt;day&gt;" in page
    assert not re.search(r"https?://", page)
    assert "default-src 'none'; img-src data:" in page
    assert "<dt>labels</dt><dd>keeper</dd>" in page and "<dt>steps</dt><dd>8</dd>" in page
    assert page.count("<figure") == 2 and '<div class="noposter">failed</div>' in page
