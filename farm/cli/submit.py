"""``farm submit PROMPT``: put one render (or a seed sweep) on the farm's queue.

Prints the job id(s), one per line. The spec options are those of ``farm render``; the seed comes
from ``--seed``, ``--seed-from-prompt [--salt S]``, ``--sweep BASE:RADIUS`` (one job per seed of
BASE-RADIUS..BASE+RADIUS) or, with none of them, a random seed that is recorded. A job identical
to a succeeded one is answered from the cache at once (``--no-cache`` renders anyway).

Also :func:`submission_summary`, which ``farm sweep`` prints too. Nothing heavy is imported
until a command runs.
"""

from __future__ import annotations

from typing import Any

import click

from farm.cli.common import emit_json, handle_errors, json_option, not_sent_exit, option
from farm.cli.options import client_options, open_client, priority_option, seed_options, spec_options
from farm.errors import InvalidInput


def parse_sweep(text: str | None) -> tuple[int, int] | None:
    """``"BASE:RADIUS"`` -> ``(base, radius)`` (the ranges are checked by the client)."""
    if text is None:
        return None
    base, sep, radius = text.partition(":")
    try:
        if not sep:
            raise ValueError(text)
        return int(base), int(radius)
    except ValueError:
        raise InvalidInput.one("sweep", "base_radius", f"must be BASE:RADIUS (two integers), got {text!r}") from None


def register(group: click.Group) -> None:
    """Add ``farm submit`` to ``group``."""
    @group.command("submit")
    @click.argument("prompt")
    @seed_options
    @option("--sweep", "sweep_text", default=None, metavar="BASE:RADIUS", envvar="FARM_SUBMIT_SWEEP",
            help="One job per seed BASE-RADIUS..BASE+RADIUS (strategy sweep), as one batch.")
    @spec_options
    @priority_option("interactive", "Queue: interactive (someone is waiting) or batch.")
    @option("--no-cache", is_flag=True, default=False,
            help="Render even if an identical job already succeeded or is in progress.")
    @option("--idempotency-key", default=None,
            help="Submitting again with the same key returns the first submission's job ids.")
    @client_options
    @json_option()
    @handle_errors()
    def submit(prompt: str, seed: int | None, seed_from_prompt_flag: bool, salt: str, sweep_text: str | None,
               model: str | None, priority: str, no_cache: bool, idempotency_key: str | None,
               allow_degrade: bool, tags: tuple[str, ...], database_url: str | None, broker_url: str | None,
               as_json: bool, **values: Any) -> None:
        """Queue a render of PROMPT on the farm; prints the job id(s)."""
        from farm.client.specs import SPEC_OPTIONS, parse_tags

        fields: dict[str, Any] = {SPEC_OPTIONS[k]: v for k, v in values.items() if v is not None}
        fields.update(allow_degrade=allow_degrade, tags=parse_tags(tags))
        sweep = parse_sweep(sweep_text)
        with open_client(database_url, broker_url) as client:
            sub = client.submit_detailed(
                prompt, seed=seed, seed_from_prompt=seed_from_prompt_flag, salt=salt, sweep=sweep, model=model,
                priority=priority, no_cache=no_cache, idempotency_key=idempotency_key, **fields,
            )
            error = client.last_send_error
        if as_json:
            emit_json(sub.to_dict())
        else:
            for job_id in sub.job_ids:
                click.echo(job_id)
            submission_summary(sub.to_dict())
        not_sent_exit(sub.not_sent, error)


def submission_summary(sub: dict[str, Any]) -> None:
    """One line on stderr: how many jobs, their seeds, what was sent, the group id, cache hits."""
    n = len(sub["job_ids"])
    seeds = sub["seeds"]
    seed_text = f"seed {seeds[0]}" if n == 1 else f"seeds {seeds[0]}..{seeds[-1]}"
    parts = [f"{n} job(s), {seed_text} [{sub['seed_strategy']}]", f"{sub['enqueued']} enqueued"]
    if sub.get("batch_id"):
        parts.append(f"batch {sub['batch_id']} (farm wait {sub['batch_id']})")
    if not sub["created"]:
        parts.append("idempotency key seen before: the first submission's jobs")
    if n == 1 and sub.get("cache_of"):
        answered = sub.get("first_status") == "succeeded"
        parts.append(f"{'cache hit: answered from' if answered else 'following'} job {sub['cache_of']}")
    click.echo("; ".join(parts), err=True)
