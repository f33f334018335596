"""``callgate stats``: attempts, ASR, ACD, PDD, CPS and hangup causes (ConnexCS's Stats tab).

Computed from the billing records (``calls``), overall or by local day/month
(``billing.timezone``). ASR = answered / attempts; ACD = billed seconds / answered; PDD = mean
Dial-to-first-ring of the calls that rang; CPS = the most calls started in one second.
"""

from __future__ import annotations

import click

from callgate.cli._common import app, echo_json, echo_table, engine_for, run
from callgate.cli.calls import parse_when, zone_of
from callgate.store import calls as call_store
from callgate.store.accounts import require_account


@click.command()
@click.option("--since", help="Calls started at or after (YYYY-MM-DD or ISO time, local).")
@click.option("--until", help="Calls started before (YYYY-MM-DD or ISO time, local).")
@click.option("--account", help="Only this account (number, alias or #id).")
@click.option(
    "--by",
    type=click.Choice([p.value for p in call_store.StatsPeriod]),
    default=call_store.StatsPeriod.ALL.value,
    show_default=True,
    help="One line overall, per day or per month.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(
    since: str | None, until: str | None, account: str | None, by: str, as_json: bool
) -> None:
    """Call statistics from the billing records."""
    settings = app().settings
    zone = zone_of(settings)
    start = parse_when(since, zone, "--since")
    end = parse_when(until, zone, "--until")

    async def main() -> list[call_store.CallStats]:
        async with engine_for(settings) as engine, engine.connect() as conn:
            account_id = (await require_account(conn, account)).id if account else None
            flt = call_store.CallFilter(account_id=account_id, since=start, until=end)
            return await call_store.call_stats(conn, flt, by=call_store.StatsPeriod(by), zone=zone)

    periods = run(main())
    data = [p.as_dict() for p in periods]
    if as_json:
        echo_json(data)
        return
    echo_table(
        [
            "PERIOD",
            "ATTEMPTS",
            "ANSWERED",
            "ASR%",
            "ACD",
            "PDD_MS",
            "PEAK_CPS",
            "CHANNELS",
            "COST",
            "CAUSES",
        ],
        [
            [
                d["period"],
                d["attempts"],
                d["answered"],
                d["asr_percent"],
                d["acd_seconds"],
                "" if d["pdd_ms"] is None else d["pdd_ms"],
                d["peak_cps"],
                d["peak_channels"],
                d["cost"],
                " ".join(f"{k}:{v}" for k, v in d["hangup_causes"].items()),
            ]
            for d in data
        ],
    )
