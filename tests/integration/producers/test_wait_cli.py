"""``farm wait`` as people run it: the real console script on the real ledger (Postgres) and Redis.

Jobs reach their final status through the ledger's own transitions (claim, then success, failure
or cancel), as a worker would drive them, without a worker. Checked: the exit codes (0 all
succeeded, 1 failed/cancelled, 124 timeout, 4 unknown id, 2 not an id), the failed and cancelled
jobs named with their recorded errors, the plain line per change in logs, ``--json`` untouched,
and the live display on a real terminal (a pseudo-terminal of 60 columns) that never wraps.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from producer_helpers import FARM, RunFarm, write_manifest
from rich.text import Text

from farm.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from farm.cli.status import EXIT_TIMEOUT, EXIT_UNKNOWN_ID
from farm.cli.wait_view import MAX_LISTED
from farm.client import Client
from farm.client.failures import Unsuccessful, unsuccessful_jobs
from farm.ledger import Ledger

OOM = "CUDA out of memory.\nTried to allocate 2.00 GiB"
OOM_LINE = "RenderError: CUDA out of memory. Tried to allocate 2.00 GiB"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def batch_of(client: Client, ledger: Ledger, tmp_path: Path, n: int, name: str) -> tuple[str, list[str]]:
    items = [{"prompt": f"{name}, take {i}", "seed": 500 + i} for i in range(n)]
    batch_id = client.submit_batch(write_manifest(tmp_path / f"{name}.jsonl", items, name=name)).batch_id
    return batch_id, [j.id for j in ledger.batch_jobs(batch_id)]


def succeed(ledger: Ledger, job_id: str) -> None:
    assert ledger.claim(job_id, worker_host="w@h", worker_device="cpu", lease_s=60) is not None
    ledger.record_success(job_id, output_uri=f"file:///o/ab/{job_id}/video.mp4", file_sha256="f" * 64,
                          frames_sha256="e" * 64, effective_params={}, weights_fingerprint="wf",
                          env_fingerprint={}, timings={}, worker_host="w@h")


def fail(ledger: Ledger, job_id: str, message: str = OOM, error_type: str = "RenderError") -> None:
    assert ledger.claim(job_id, worker_host="w@h", worker_device="cpu", lease_s=60) is not None
    ledger.record_failure(job_id, error_type=error_type, error_message=message, retry=False, worker_host="w@h")


def test_all_succeeded_exits_0(client: Client, ledger: Ledger, tmp_path: Path, run_farm: RunFarm) -> None:
    batch_id, jobs = batch_of(client, ledger, tmp_path, 3, "all good")
    for job_id in jobs:
        succeed(ledger, job_id)
    proc = run_farm("wait", batch_id, "--poll", "0.1")
    assert proc.returncode == EXIT_OK, proc.stderr
    lines = proc.stderr.splitlines()
    assert "succeeded 3" in lines[0] and lines[0].endswith("done") and f"batch {batch_id}" in lines[0]
    assert lines[-1] == "all 3 job(s) succeeded" and len(lines) == 2 and proc.stdout == ""


def test_failed_and_cancelled_jobs_are_named_with_their_errors(
    client: Client, ledger: Ledger, tmp_path: Path, run_farm: RunFarm
) -> None:
    batch_id, jobs = batch_of(client, ledger, tmp_path, 5, "mixed")
    succeed(ledger, jobs[0])
    fail(ledger, jobs[1])
    ledger.cancel(jobs[2])
    fail(ledger, jobs[3], message="weights missing: wan2.2/high_noise", error_type="WeightsMissing")
    succeed(ledger, jobs[4])
    proc = run_farm("wait", batch_id, "--poll", "0.1")
    assert proc.returncode == EXIT_FAILED, proc.stderr
    lines = proc.stderr.splitlines()
    assert "succeeded 2  failed 2  cancelled 1" in lines[0] and lines[0].endswith("done")
    assert lines[1:] == [
        f"failed     {jobs[1]}  {OOM_LINE}",  # the recorded error, on one line
        f"failed     {jobs[3]}  WeightsMissing: weights missing: wan2.2/high_noise",
        f"cancelled  {jobs[2]}",
        "3 of 5 job(s) did not succeed: 2 failed, 1 cancelled",
    ]

    # --json: the report on stdout as before, nothing else there; the same exit code
    as_json = run_farm("wait", batch_id, "--poll", "0.1", "--json")
    payload = json.loads(as_json.stdout)
    assert as_json.returncode == EXIT_FAILED and payload == json.loads(json.dumps(client.status(batch_id).to_dict()))
    assert as_json.stderr == ""


def test_at_most_twenty_are_listed_then_counted(
    client: Client, ledger: Ledger, tmp_path: Path, run_farm: RunFarm
) -> None:
    batch_id, jobs = batch_of(client, ledger, tmp_path, MAX_LISTED + 3, "many")
    for i, job_id in enumerate(jobs):
        fail(ledger, job_id, message=f"boom {i}\nstack line")
    proc = run_farm("wait", batch_id, "--poll", "0.1")
    assert proc.returncode == EXIT_FAILED, proc.stderr
    listed = [line for line in proc.stderr.splitlines() if line.startswith("failed ")]
    assert listed == [f"failed     {jobs[i]}  RenderError: boom {i} stack line" for i in range(MAX_LISTED)]
    assert proc.stderr.splitlines()[-2:] == ["... and 3 more", f"{MAX_LISTED + 3} of {MAX_LISTED + 3} job(s) did "
                                             f"not succeed: {MAX_LISTED + 3} failed, 0 cancelled"]


def test_a_timeout_exits_124_and_names_the_failures_so_far(
    client: Client, ledger: Ledger, run_farm: RunFarm
) -> None:
    [broken] = client.submit("this one breaks", seed=11)
    [pending] = client.submit("nobody renders this", seed=12)
    fail(ledger, broken)
    proc = run_farm("wait", broken, pending, "--timeout", "0.5", "--poll", "0.1")
    assert proc.returncode == EXIT_TIMEOUT, proc.stderr
    lines = proc.stderr.splitlines()
    assert "queued 1" in lines[0] and "failed 1" in lines[0]
    assert lines[-2:] == [f"failed     {broken}  {OOM_LINE}",
                          "timed out after 0.5 s: 1/2 finished (1 failed, 0 cancelled)"]


def test_an_unknown_id_has_its_own_exit_code(client: Client, ledger: Ledger, tmp_path: Path,
                                             run_farm: RunFarm) -> None:
    batch_id, [job_id] = batch_of(client, ledger, tmp_path, 1, "known")
    succeed(ledger, job_id)
    unknown = str(uuid.uuid4())
    for ids in ([unknown], [batch_id, unknown], [unknown, job_id]):
        proc = run_farm("wait", *ids, "--timeout", "5", "--poll", "0.1")
        assert proc.returncode == EXIT_UNKNOWN_ID, (ids, proc.stderr)
        assert proc.stderr.splitlines() == [f"error: no job or batch has the id '{unknown}'"]
    as_json = run_farm("wait", unknown, "--json")
    assert as_json.returncode == EXIT_UNKNOWN_ID
    assert json.loads(as_json.stdout) == {"error": "JobNotFound", "id": unknown,
                                          "message": f"no job or batch has the id '{unknown}'"}
    # not an id at all: bad input (2), naming the field and the rule, like every command
    bad = run_farm("wait", "not-an-id")
    assert bad.returncode == EXIT_BAD_INPUT and "id:" in bad.stderr and "[uuid]" in bad.stderr
    # the known ones alone are fine
    assert run_farm("wait", batch_id, job_id, "--poll", "0.1").returncode == EXIT_OK


def test_the_listing_reads_each_job_once_failed_first(client: Client, ledger: Ledger, tmp_path: Path) -> None:
    batch_id, jobs = batch_of(client, ledger, tmp_path, 4, "listed")
    ledger.cancel(jobs[0])
    fail(ledger, jobs[1])
    fail(ledger, jobs[2], message="second")
    succeed(ledger, jobs[3])
    [alone] = client.submit("a job of its own", seed=77)
    ledger.cancel(alone)
    oom = f"RenderError: {OOM}"  # as recorded: made one line only when shown
    # a job named on its own and through its batch is listed once; failed before cancelled
    listed = unsuccessful_jobs(client, [jobs[2], batch_id, alone, jobs[3]])
    assert listed == [Unsuccessful(jobs[2], "failed", "RenderError: second"), Unsuccessful(jobs[1], "failed", oom),
                      Unsuccessful(alone, "cancelled", None), Unsuccessful(jobs[0], "cancelled", None)]
    assert unsuccessful_jobs(client, [batch_id], limit=2) == listed[1:2] + listed[0:1]  # manifest order
    assert unsuccessful_jobs(client, [jobs[3]]) == []


def read_until(stream: IO[str], seen: list[str], want: Callable[[str], bool]) -> str:
    """Lines of ``stream`` (kept in ``seen``) until one ``want``s; that line."""
    while line := stream.readline():
        seen.append(line.rstrip("\n"))
        if want(line):
            return line
    raise AssertionError(f"never printed; got {seen}")


def test_logs_get_a_line_each_time_the_counts_change(
    client: Client, ledger: Ledger, tmp_path: Path, farm_env: dict[str, str]
) -> None:
    batch_id, jobs = batch_of(client, ledger, tmp_path, 3, "followed")
    seen: list[str] = []
    with subprocess.Popen([FARM, "wait", batch_id, "--poll", "0.1"], env=farm_env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        guard = threading.Timer(90, proc.kill)  # (a hung wait fails the test instead of blocking it)
        guard.start()
        try:
            read_until(proc.stderr, seen, lambda line: "queued 3" in line)
            succeed(ledger, jobs[0])
            read_until(proc.stderr, seen, lambda line: "succeeded 1" in line)
            fail(ledger, jobs[1])
            read_until(proc.stderr, seen, lambda line: "failed 1" in line)
            succeed(ledger, jobs[2])
            read_until(proc.stderr, seen, lambda line: line.rstrip().endswith("done"))
            rest = proc.stderr.read().splitlines()
            assert proc.wait(timeout=30) == EXIT_FAILED
        finally:
            guard.cancel()
            proc.kill()
    assert rest == [f"failed     {jobs[1]}  {OOM_LINE}", "1 of 3 job(s) did not succeed: 1 failed, 0 cancelled"]
    assert all("\x1b" not in line and "\r" not in line for line in seen)  # plain text
    done = [int(re.search(r"(\d+)/3", line).group(1)) for line in seen]  # type: ignore[union-attr]
    assert done == sorted(done) and len(set(seen)) == len(seen)  # in order, one line per change


def read_pty(fd: int, out: bytearray) -> None:
    """Everything written to the pseudo-terminal until its last writer closed it."""
    while True:
        ready, _, _ = select.select([fd], [], [], 120)
        if not ready:
            return
        try:
            chunk = os.read(fd, 65536)
        except OSError as exc:  # EIO: the child side is closed
            if exc.errno == errno.EIO:
                return
            raise
        if not chunk:
            return
        out.extend(chunk)


def shown(out: bytearray, marker: bytes, timeout_s: float = 60) -> None:
    """Wait until the terminal got ``marker``."""
    deadline = time.monotonic() + timeout_s
    while marker not in out:
        assert time.monotonic() < deadline, f"{marker!r} never drawn: {bytes(out)!r}"
        time.sleep(0.05)


def test_the_live_display_on_a_terminal_never_wraps(
    client: Client, ledger: Ledger, tmp_path: Path, farm_env: dict[str, str]
) -> None:
    columns = 60
    batch_id, jobs = batch_of(client, ledger, tmp_path, 3, "on a terminal")
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in farm_env.items() if k not in ("COLUMNS", "LINES", "TTY_COMPATIBLE", "TERM")}
    env["TERM"] = "xterm-256color"
    out = bytearray()
    try:
        with subprocess.Popen([FARM, "wait", batch_id, "--poll", "0.1"], env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=child) as proc:
            os.close(child)
            reader = threading.Thread(target=read_pty, args=(main, out), daemon=True)
            reader.start()
            try:
                shown(out, b"0/3")  # its first drawing: nothing done yet
                succeed(ledger, jobs[0])
                shown(out, b"1/3")
                fail(ledger, jobs[1])
                shown(out, b"2/3")
                succeed(ledger, jobs[2])
                assert proc.wait(timeout=90) == EXIT_FAILED
                assert proc.stdout is not None and proc.stdout.read() == b""
                reader.join(timeout=30)
            finally:
                proc.kill()  # (a no-op once it exited; a hung wait must not hang the test)
    finally:
        os.close(main)
    raw = out.decode("utf-8")
    assert "\x1b[2K" in raw  # erased and drawn again: a live display, not a log
    visible = [seg for line in ANSI.sub("", raw).split("\n") for seg in line.split("\r") if seg.strip()]
    assert all(Text(seg).cell_len <= columns for seg in visible), [s for s in visible if len(s) > columns]
    assert any(seg.startswith(f"failed     {jobs[1]}") for seg in visible), visible
    assert visible[-1] == "1 of 3 job(s) did not succeed: 1 failed, 0 cancelled"
    assert any("3/3" in seg and "done" in seg for seg in visible)
