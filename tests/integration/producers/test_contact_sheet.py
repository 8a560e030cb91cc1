"""The contact sheet and the HTML report of a real batch, rendered in-process on the tiny model.

A batch of four (one cancelled before it rendered, one with a ``<script>`` prompt) on the file
store: the sheet is a PNG of the layout's size whose poster squares hold each job's own poster in
manifest order (read back from the store) and a grey square for the cancelled job; the HTML embeds
the three posters as data: URIs, escapes the prompt and names no http(s) URL; ``farm results
--format sheet|html`` writes the same bytes. On an s3 store (moto) the posters are read from the
bucket, and the CSV's poster column is a presigned URL that gives the same PNG.
"""

from __future__ import annotations

import base64
import io
import re
import urllib.request
from pathlib import Path
from typing import Any

from moto_s3 import MotoS3
from PIL import Image, ImageChops
from producer_helpers import RunFarm, Work, write_manifest

from farm.client import Client
from farm.client.contact_sheet import NO_POSTER, POSTER_PX, contact_sheet_png, html_report, sheet_layout
from farm.client.export import export_rows
from farm.ledger import JobStatus, Ledger
from farm.settings import Settings

SCRIPT = "<script>alert(1)</script> a lantern on a pier"
ITEMS = [
    {"prompt": "a red fox running through fresh snow at dawn, low sun, long shadows, cinematic", "seed": 11},
    {"prompt": SCRIPT, "seed": 4294967295},
    {"prompt": "a heron over a misty lake", "seed": 0},
    {"prompt": "a kite above a beach", "seed": 5},
]


def submit(client: Client, tmp_path: Path, items: list[dict[str, Any]], name: str) -> str:
    return client.submit_batch(write_manifest(tmp_path / f"{name}.jsonl", items, name=name)).batch_id


def store_poster(client: Client, output_uri: str | None, tmp_path: Path) -> Image.Image:
    """A job's poster as the output store has it."""
    dest = tmp_path / "expected-poster.png"
    client.store.copy_to(output_uri, dest, poster=True)
    with Image.open(dest) as img:
        return img.convert("RGB")


def tile(sheet: Image.Image, index: int, total: int) -> Image.Image:
    return sheet.crop(sheet_layout(total).poster_box(index))


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def test_sheet_and_report_of_a_rendered_batch(client: Client, ledger: Ledger, work: Work, tmp_path: Path,
                                              run_farm: RunFarm) -> None:
    batch_id = submit(client, tmp_path, ITEMS, "sheet")
    client.cancel(ledger.batch_jobs(batch_id)[3].id)
    work()
    jobs = ledger.batch_jobs(batch_id)
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * 3 + [JobStatus.CANCELLED]
    posters = [store_poster(client, j.output_uri, tmp_path) for j in jobs[:3]]
    assert all(p.size == (32, 32) for p in posters)
    assert not same(posters[0], posters[1]) and not same(posters[1], posters[2])  # the order check means something

    data = contact_sheet_png(client, batch_id)
    layout = sheet_layout(len(jobs))
    sheet = Image.open(io.BytesIO(data))
    assert sheet.format == "PNG" and sheet.size == (layout.width, layout.height)
    sheet = sheet.convert("RGB")
    for index, poster in enumerate(posters):
        square = tile(sheet, index, len(jobs))
        assert len(square.getcolors(maxcolors=1 << 16) or ()) > 1  # not uniform: a poster was drawn
        # enlarged 5x with sharp pixels: sampling the pixel centres gives the stored poster back exactly
        assert same(square.resize(poster.size, Image.Resampling.NEAREST), poster), index
    assert tile(sheet, 3, len(jobs)).getcolors() == [(POSTER_PX * POSTER_PX, NO_POSTER)]

    page = html_report(client, batch_id)
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 3
    for uri, poster in zip(uris, posters, strict=True):
        with Image.open(io.BytesIO(base64.b64decode(uri))) as embedded:
            assert same(embedded.convert("RGB"), poster)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; a lantern on a pier" in page
    assert not re.search(r"https?://", page)
    assert '<div class="noposter">cancelled</div>' in page and str(jobs[1].seed) in page

    out_png, out_html = tmp_path / "sheet.png", tmp_path / "report.html"
    proc = run_farm("results", batch_id, "--format", "sheet", "--output", str(out_png))
    assert proc.returncode == 0 and "contact sheet written" in proc.stderr, proc.stderr
    assert out_png.read_bytes() == data
    proc = run_farm("results", batch_id, "--format", "html", "--output", str(out_html))
    assert proc.returncode == 0, proc.stderr
    assert out_html.read_text(encoding="utf-8") == page
    refused = run_farm("results", batch_id, "--format", "sheet")
    assert refused.returncode == 2 and "output: --format sheet writes a binary file" in refused.stderr
    not_a_batch = run_farm("results", jobs[0].id, "--format", "html", "--output", str(out_html))
    assert not_a_batch.returncode == 1 and "no batch with id" in not_a_batch.stderr


def test_sheet_and_csv_read_the_s3_store(settings: Settings, moto_s3: MotoS3, engine: Any, tmp_path: Path) -> None:
    from farm.store.writer import open_writer
    from farm.worker.runner import JobRunner

    s3_settings = Settings(**{**settings.model_dump(), "output_dir": None, **moto_s3.settings_values()})
    with Client.from_settings(s3_settings) as s3_client:
        batch_id = submit(s3_client, tmp_path, ITEMS[:2], "s3-sheet")
        jobs = s3_client.ledger.batch_jobs(batch_id)
        runner = JobRunner(ledger=s3_client.ledger, engine=engine, store=open_writer(s3_settings),
                           worker_host="test-cpu@here", worker_device="cpu", lease_s=60, heartbeat_s=5)
        assert [o.outcome for o in runner.run([j.id for j in jobs])] == ["succeeded", "succeeded"]
        rows = s3_client.results(batch_id)
        assert all(r["output_uri"].startswith("s3://") for r in rows)
        sheet = Image.open(io.BytesIO(contact_sheet_png(s3_client, batch_id))).convert("RGB")
        table = export_rows(rows, s3_client.store).dicts()
    for index, line in enumerate(table):
        poster_url = str(line["poster"])
        assert poster_url.startswith(moto_s3.endpoint + "/"), poster_url  # presigned
        with urllib.request.urlopen(poster_url, timeout=30) as response:  # the test's own server
            poster = Image.open(io.BytesIO(response.read())).convert("RGB")
        assert same(tile(sheet, index, 2).resize(poster.size, Image.Resampling.NEAREST), poster), index
