"""Benchmark of the rating core: build a PrefixIndex of N prefixes, measure memory and speed.

    /work/venv/bin/python bench/rating_index.py [--count 1000000] [--seconds 3] [--seed 1]

Generates a deck of N distinct prefixes (country codes followed by NPA-NXX-like digits, 4 to 10
digits long; 1 % of them also carry an off-peak rate with a week window) as the rows a store query
would return, then times what the store's loader does: validated Rate values (repeated values
shared through an Interner) and the index. Prints the build times, the RSS after the build (VmRSS
and the peak), lookups/s and quotes/s (a call plan of two rate tables) on random numbers at a
fixed aware time.
Targets on the 2-core box: index build <= 10 s, RSS <= 500 MB, >= 250,000 lookups/s.
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from callgate.rating import (
    CallPlan,
    InsufficientCreditError,
    Interner,
    NoRateError,
    PlanTable,
    PrefixIndex,
    Rate,
    RoutingMode,
    quote,
)

# (country code, destination) - a realistic spread of code lengths (1 to 3 digits).
COUNTRIES: tuple[tuple[str, str], ...] = (
    ("1", "USA/Canada"),
    ("7", "Russia"),
    ("20", "Egypt"),
    ("27", "South Africa"),
    ("31", "Netherlands"),
    ("33", "France"),
    ("34", "Spain"),
    ("39", "Italy"),
    ("44", "United Kingdom"),
    ("49", "Germany"),
    ("52", "Mexico"),
    ("55", "Brazil"),
    ("61", "Australia"),
    ("62", "Indonesia"),
    ("63", "Philippines"),
    ("81", "Japan"),
    ("86", "China"),
    ("90", "Turkey"),
    ("91", "India"),
    ("234", "Nigeria"),
    ("254", "Kenya"),
    ("351", "Portugal"),
    ("380", "Ukraine"),
    ("880", "Bangladesh"),
    ("966", "Saudi Arabia"),
    ("971", "United Arab Emirates"),
)
SELL_PRICES = tuple(Decimal(cents) / 1000 for cents in range(5, 400, 7))  # 57 price points
BLOCKS = ((60, 6), (30, 6), (1, 1), (60, 60), (0, 0))
AT = datetime(2026, 11, 18, 14, 30, tzinfo=UTC)  # a Wednesday afternoon
OFF_PEAK = (5 * 1440, 1439)  # Saturday 00:00 .. Monday 23:59 (wraps)


def make_prefixes(count: int, rng: random.Random) -> list[str]:
    """`count` distinct digit strings of 4..10 digits, each starting with a country code."""
    seen: set[str] = set()
    prefixes: list[str] = []
    while len(prefixes) < count:
        code, _ = rng.choice(COUNTRIES)
        length = rng.randint(max(4, len(code) + 1), 10)
        prefix = code + str(rng.randrange(10 ** (length - len(code)))).zfill(length - len(code))
        if prefix not in seen:
            seen.add(prefix)
            prefixes.append(prefix)
    return prefixes


# A row as the store's query delivers it: prefix, sell, buy, block, step, destination, window, id.
Row = tuple[str, Decimal, Decimal, int, int, str, tuple[int, int] | None, int]
BUY_PRICES = {sell: sell * 7 / 10 for sell in SELL_PRICES}


@dataclass(frozen=True, slots=True)
class Deck:
    """A generated rate deck, stored by columns so that the deck itself weighs little."""

    prefixes: list[str]
    prices: bytes  # index into SELL_PRICES, per prefix
    blocks: bytes  # index into BLOCKS, per prefix

    def rows(self) -> Iterator[Row]:
        """The rows, one at a time, as a database cursor would yield them."""
        names = dict(COUNTRIES)
        for number, prefix in enumerate(self.prefixes):
            if prefix[:3] in names:
                destination = names[prefix[:3]]
            else:
                destination = names.get(prefix[:2]) or names[prefix[0]]
            sell = SELL_PRICES[self.prices[number]]
            block, step = BLOCKS[self.blocks[number]]
            yield (prefix, sell, BUY_PRICES[sell], block, step, destination, None, number)
            if number % 100 == 0:  # an off-peak rate for the weekend, beside the normal one
                cheap = SELL_PRICES[self.prices[number] // 2]
                yield (prefix, cheap, BUY_PRICES[cheap], 1, 1, destination, OFF_PEAK, -number)


def make_deck(count: int, rng: random.Random) -> Deck:
    prefixes = make_prefixes(count, rng)
    prices = bytes(rng.randrange(len(SELL_PRICES)) for _ in range(count))
    blocks = bytes(rng.randrange(len(BLOCKS)) for _ in range(count))
    return Deck(prefixes, prices, blocks)


def build_rates(rows: Iterable[Row], interner: Interner) -> list[Rate]:
    """What the store's loader does: one validated Rate per row, repeated values shared."""
    money, share = interner.money, interner.share
    rates: list[Rate] = []
    for prefix, sell, buy, block, step, destination, window, rate_id in rows:
        week_start, week_end = window if window is not None else (None, None)
        rates.append(
            Rate(
                prefix,
                money(sell),
                initial_block=block,
                increment=step,
                buy_rate=money(buy),
                buy_initial_block=block,
                buy_increment=step,
                week_start=week_start,
                week_end=week_end,
                destination=share(destination),
                id=rate_id,
            )
        )
    return rates


def rss_mb() -> float:
    """The current resident set size (VmRSS) in MB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """The peak resident set size in MB (ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_numbers(prefixes: Sequence[str], count: int, rng: random.Random) -> list[str]:
    """Dialled numbers: 80 % extend a known prefix, 20 % are random E.164-like digits."""
    numbers: list[str] = []
    for _ in range(count):
        if rng.random() < 0.8:
            head = rng.choice(prefixes)
        else:
            head = rng.choice(COUNTRIES)[0]
        tail = 12 - len(head)
        numbers.append(head + str(rng.randrange(10**tail)).zfill(tail) if tail > 0 else head)
    return numbers


class Stopwatch:
    """Wall-clock and CPU seconds of a block: the box is shared, CPU time shows the cost."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def __str__(self) -> str:
        return f"{self.wall:8.2f} s wall {self.cpu:8.2f} s CPU"


def per_second(work: Callable[[str], object], numbers: Sequence[str], seconds: float) -> str:
    """Calls of `work` per wall second and per CPU second, over `numbers` for about `seconds`."""
    done = 0
    with Stopwatch() as watch:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for number in numbers:
                work(number)
            done += len(numbers)
    return f"{done / watch.wall:>10,.0f} /s wall {done / watch.cpu:>10,.0f} /s CPU"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=1_000_000, help="distinct prefixes")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput measure")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-gc-during-build",
        action="store_true",
        help="disable the cyclic GC while the rates are built (a loader's option)",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    baseline = rss_mb()

    with Stopwatch() as deck_watch:
        deck = make_deck(args.count, rng)
    prefixes = deck.prefixes

    interner = Interner()
    if args.no_gc_during_build:
        gc.disable()
    with Stopwatch() as rates_watch:
        rates = build_rates(deck.rows(), interner)
    with Stopwatch() as index_watch:
        index = PrefixIndex("carrier-a", rates, default_trunk="carrier-a", version=1)
    gc.enable()
    del rates  # the index holds the rates; the list was the loader's
    after_build = rss_mb()
    with Stopwatch() as gc_watch:
        gc.collect()
    gc.freeze()  # what the loader should do after a build: the index leaves the GC's scans

    print(
        f"prefixes           {index.prefix_count:>12,}  (deck generated in {deck_watch.wall:.1f} s)"
    )
    print(f"rates              {len(index):>12,}  (longest prefix {index.max_prefix_len})")
    print(f"shared values      {len(interner):>12,}")
    gc_note = "GC off" if args.no_gc_during_build else "GC on"
    print(f"Rate values        {rates_watch}  (rows -> validated, interned Rate; {gc_note})")
    print(f"index build        {index_watch}")
    print(
        f"build total        {rates_watch.wall + index_watch.wall:8.2f} s wall "
        f"{rates_watch.cpu + index_watch.cpu:8.2f} s CPU  (target <= 10 s)"
    )
    print(
        f"RSS after build    {after_build:>8.1f} MB  (target <= 500 MB; {baseline:.1f} MB before)"
    )
    print(f"peak RSS (maxrss)  {peak_rss_mb():>8.1f} MB")
    print(
        f"full gc.collect()  {gc_watch.wall * 1000:>8.0f} ms with the index live (then gc.freeze())"
    )

    numbers = make_numbers(prefixes, 100_000, rng)
    hits = sum(1 for number in numbers if index.lookup(number, AT))
    print(
        f"lookups            {per_second(lambda n: index.lookup(n, AT), numbers, args.seconds)}"
        f"  (target >= 250,000; {hits / 1000:.0f} % hit)"
    )

    second = PrefixIndex(
        "carrier-b",
        [
            Rate(p, interner.money(Decimal("0.05")), buy_rate=interner.money(Decimal("0.03")))
            for p in prefixes[::10]
        ],
        default_trunk="carrier-b",
        version=1,
    )
    plan = CallPlan(
        "retail",
        RoutingMode.LCR,
        14_400,
        (PlanTable("carrier-a", 1, index), PlanTable("carrier-b", 2, second)),
    )
    available = Decimal("5.00000")

    def one_quote(number: str) -> object:
        try:
            return quote(plan, number, available, 36_000, AT)
        except (NoRateError, InsufficientCreditError) as refused:
            return refused

    print(
        f"quotes             {per_second(one_quote, numbers, args.seconds)}"
        f"  (LCR plan of 2 tables: {len(index):,} + {len(second):,} rates)"
    )
    print(f"RSS at end         {rss_mb():>8.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
