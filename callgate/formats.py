"""Plain-text renderings shared by the CLI and the web console: a value as text, and the
accounts export as CSV (a header line) or XML (one ``<account>`` per row)."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import datetime
from enum import Enum
from typing import IO, Any

XML_END = "</accounts>\n"


def text(value: Any) -> str:
    """A value as the CLI and exports show it: yes/no, ISO-8601 times, enum values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def write_csv(out: IO[str], columns: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    """Write the header; return a function that writes one row."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    return lambda row: writer.writerow([text(row[c]) for c in columns])


def write_xml(out: IO[str], columns: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    """Write the XML header; return a function that writes one row (end with :data:`XML_END`)."""
    out.write('<?xml version="1.0" encoding="UTF-8"?>\n<accounts>\n')

    def _row(row: dict[str, Any]) -> None:
        element = ET.Element("account")
        for column in columns:
            cell = ET.SubElement(element, column)
            if row[column] is None:
                cell.set("null", "true")
            else:
                cell.text = text(row[column])
        out.write("  " + ET.tostring(element, encoding="unicode") + "\n")

    return _row
