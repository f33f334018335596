"""The in-memory prefix index of one rate table (DESIGN.md decision 3: no SQL on the hot path).

A dict from prefix to its rate (or a tuple of rates when several share the prefix, with
different validity dates or week windows), probed from the longest possible prefix of the number
down to the shortest, as CGRateS' SplitPrefix does. A probe is a string slice and a dict lookup,
at most `max_prefix_len` of them, whatever the size of the table. The index is immutable once
built; a changed rate table gets a new index with a higher `version`, swapped in atomically.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from callgate.rating.model import Rate
from callgate.rating.windows import in_validity, in_week_window

__all__ = ["PrefixIndex", "rate_applies"]


def rate_applies(rate: Rate, at: datetime) -> bool:
    """Whether `rate` applies to a call starting at `at` (validity dates and week window)."""
    return in_validity(at, rate.valid_from, rate.valid_to) and in_week_window(
        at, rate.week_start, rate.week_end
    )


class PrefixIndex:
    """The rates of one rate table, by prefix.

    `name` is the rate table's name; `default_trunk` the trunk of its rates whose `trunk` is
    None; `version` identifies the build (the store's change counter). ``len(index)`` is the
    number of rates; `prefix_count` the number of distinct prefixes.
    """

    __slots__ = ("_max_len", "_probes", "_rates", "_size", "default_trunk", "name", "version")

    def __init__(
        self,
        name: str,
        rates: Iterable[Rate],
        *,
        default_trunk: str | None = None,
        version: int = 0,
    ) -> None:
        self.name = name
        self.default_trunk = default_trunk
        self.version = version
        table: dict[str, Rate | tuple[Rate, ...]] = {}
        get = table.get
        size = 0
        for rate in rates:
            if type(rate) is not Rate:
                raise TypeError(f"rate table {name!r}: not a Rate: {rate!r}")
            prefix = rate.prefix
            found = get(prefix)
            if found is None:
                # A lone rate without dates or window is stored bare: lookup returns it as is.
                # Everything else is a tuple, whose rates lookup checks against `at`.
                table[prefix] = rate if rate.always_valid else (rate,)
            elif isinstance(found, tuple):
                table[prefix] = (*found, rate)
            else:
                table[prefix] = (found, rate)
            size += 1
        lengths = {len(prefix) for prefix in table}
        self._rates = table
        self._size = size
        self._max_len = max(lengths, default=0)
        # _probes[n]: the prefix lengths to probe for a number of n digits, longest first
        self._probes = tuple(
            tuple(sorted((length for length in lengths if length <= digits), reverse=True))
            for digits in range(self._max_len + 1)
        )

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (
            f"PrefixIndex(name={self.name!r}, rates={self._size}, "
            f"prefixes={len(self._rates)}, version={self.version})"
        )

    @property
    def prefix_count(self) -> int:
        """How many distinct prefixes the table has."""
        return len(self._rates)

    @property
    def max_prefix_len(self) -> int:
        """Length of the longest prefix (0 for an empty table)."""
        return self._max_len

    def get(self, prefix: str) -> tuple[Rate, ...]:
        """All rates of exactly `prefix`, whatever their validity, in build order."""
        found = self._rates.get(prefix)
        if found is None:
            return ()
        return found if isinstance(found, tuple) else (found,)

    def lookup(self, number: str, at: datetime) -> tuple[Rate, ...]:
        """The rates of the longest prefix of `number` with at least one rate applying at `at`.

        Only the rates of that prefix which apply at `at` are returned, in build order; ``()``
        when no prefix matches or `number` is not all ASCII digits. `at` must be timezone-aware
        and on the operator's wall clock (the week windows read it).
        """
        if at.tzinfo is None:
            raise ValueError(f"at must be timezone-aware: {at!r}")
        if not (number.isascii() and number.isdigit()):
            return ()
        probes = self._probes
        digits = len(number)
        lengths = probes[digits] if digits < len(probes) else probes[-1]
        get = self._rates.get
        for length in lengths:
            found = get(number[:length])
            if found is None:
                continue
            if not isinstance(found, tuple):
                return (found,)
            applying = tuple([rate for rate in found if rate_applies(rate, at)])
            if applying:
                return applying
        return ()
