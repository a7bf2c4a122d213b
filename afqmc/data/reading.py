"""Sentence-pair data: readers for JSON lines / CSV / TSV.

One dataset YAML describes a corpus (format, file names, column names, label map), so another
sentence-pair corpus needs no code. Every bad line stops the run with its file and line number,
or with dataset.on_bad_line=skip is left out, counted and logged. The torch datasets and the
collate function built from what is read here are in afqmc/data/datasets.py, the dataset group's keys
in afqmc/data/components.py.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf

from afqmc.data.tables import TABLE_FORMATS, Row, table_rows
from afqmc.errors import ConfigError, DataError

log = logging.getLogger(__name__)
FORMATS = {"jsonl": None, "csv": ",", "tsv": "\t", "parquet": None, "hf": None}  # format -> delimiter (text formats)
QUOTINGS = ("none", "csv")  # dataset.quoting; null: csv for CSV, none for TSV
MAX_LINE_BYTES = 1 << 20  # for configs without dataset.max_line_bytes (afqmc.predict's)


def _lines(path: Path, max_bytes: int) -> Iterator[tuple[int, str | DataError]]:
    """(line number, text) for each line, or a DataError in place of a line too long or not UTF-8.

    Binary readline(max_bytes + 1): a line of several MB is measured in pieces, never held whole.
    A UTF-8 BOM is dropped; the line ending (LF or CRLF) is kept for the csv module.
    """
    with open(path, "rb") as f:
        for lineno in count(1):
            raw = f.readline(max_bytes + 1)
            if not raw:
                return
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                size, raw = len(raw), b""  # let go of the first piece before measuring the rest
                size += _rest_of_line(f)
                yield (
                    lineno,
                    DataError(f"{path}:{lineno}: line of {size:,} bytes, above dataset.max_line_bytes={max_bytes:,}"),
                )
                continue
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    lineno,
                    DataError(
                        f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at byte {e.start + 1} of the line)"
                    ),
                )


def _rest_of_line(f) -> int:
    """Reads past the rest of an over-long line in 64 KB pieces; returns its size in bytes."""
    size = 0
    while chunk := f.readline(1 << 16):
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return size


@dataclass(frozen=True)
class Layout:
    """How a split file's lines become records: the dataset keys that read a file, as plain values."""

    fmt: str  # jsonl | csv | tsv
    header: bool = True  # CSV/TSV: the first line names the columns; false: columns are 0-based positions
    quoting: str = "none"  # CSV/TSV: none (a delimiter separates, a newline ends a row) | csv (quoted fields)
    max_bytes: int = MAX_LINE_BYTES
    labels: frozenset = frozenset()  # raw labels: a first line holding one looks like data, not a header

    @classmethod
    def of(cls, cfg) -> Layout:
        """.get: afqmc.predict's config has only format and columns."""
        fmt = cfg.format
        if fmt not in FORMATS:
            raise ConfigError(f"dataset.format={fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
        quoting = cfg.get("quoting") or ("csv" if fmt == "csv" else "none")  # null: the format's usual one
        labels = frozenset(str(k) for k in cfg.get("label_map", {}))
        return cls(fmt, cfg.get("header", True), quoting, cfg.get("max_line_bytes", MAX_LINE_BYTES), labels)


def _rows(path: Path, layout: Layout, needed: tuple = ()) -> Iterator[tuple[int, dict | DataError]]:
    """(line number, raw record) for each non-blank line, or a DataError in place of a bad line: the
    caller decides whether it stops the run (dataset.on_bad_line). `needed`: the columns a CSV/TSV must
    have (names, or positions with header=false). Every line is one record or one error, never part of
    another: rows + bad lines + blank lines (+ the header) = the lines of the file."""
    if layout.fmt in TABLE_FORMATS:  # parquet, datasets: rows, numbered from 1 (afqmc/data/tables.py)
        yield from table_rows(path, needed, layout.fmt)
        return
    lines = _lines(path, layout.max_bytes)
    if FORMATS[layout.fmt]:
        yield from _csv_rows(path, lines, layout, needed)
        return
    for lineno, text in lines:
        if isinstance(text, DataError):
            yield lineno, text
        elif text.strip():
            yield lineno, _json_object(text, f"{path}:{lineno}")


def _json_object(text: str, where: str) -> dict | DataError:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; nesting deeper than the stack
        return DataError(f"{where}: invalid JSON ({e})")
    if not isinstance(row, dict):
        return DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


class _BadCells(ValueError):
    """A line that cannot be cut into fields; the message says why."""


# the csv module's words for a quote that does not close on its line, and what they mean here
_CSV_ERRORS = {
    "unexpected end of data": "a quoted field is not closed on its line",
    "new-line character seen in unquoted field": "a carriage return (\\r) inside an unquoted field",
}


def _cells(text: str, layout: Layout) -> list[str]:
    """One line's fields. quoting=none: split at each delimiter, quotes are text. quoting=csv: RFC 4180
    quoting within the line; a field's quotes must close on the line they open (a sentence has no line
    break), so a stray quote is an error at its own line and never swallows the lines after it."""
    delimiter = FORMATS[layout.fmt]
    if layout.quoting == "none":
        return text.rstrip("\r\n").split(delimiter)
    try:
        return next(csv.reader((text,), delimiter=delimiter, strict=True))
    except csv.Error as e:
        why = next((mine for theirs, mine in _CSV_ERRORS.items() if str(e).startswith(theirs)), str(e))
        raise _BadCells(f"{why}; dataset.quoting=none reads quotes as plain text") from None


def _blank(text: str) -> bool:
    """No field at all (a line of tabs is a row of empty fields, and so a bad line, not a blank one)."""
    return not text.strip(" \r\n")


def _csv_rows(path: Path, lines, layout: Layout, needed: tuple) -> Iterator[tuple[int, dict | DataError]]:
    """Records from CSV/TSV lines, one per line. Every record has as many fields as the header (or, with
    header=false, as the first record): an extra delimiter inside a sentence would shift the columns."""
    fmt, names, width, first = layout.fmt, None, None, 0
    for lineno, text in lines:
        at_header = layout.header and names is None
        if isinstance(text, DataError):
            if at_header:  # the header line itself is too long or not UTF-8
                raise text
            yield lineno, text
            continue
        if _blank(text):
            continue
        if width is None and "\r" in text.rstrip("\r\n"):  # else a file of CR endings is one line: its first
            error = DataError(
                f"{path}:{lineno}: a carriage return (\\r) before the line's end: the file's lines end in \\r alone "
                "(old Mac line endings; expected LF or CRLF: convert with tr '\\r' '\\n'), or a sentence holds "
                "a line break"
            )
            if at_header:
                raise error
            yield lineno, error
            continue
        try:
            cells = _cells(text, layout)
        except _BadCells as e:
            if at_header:  # a header problem is no single bad line: it stops the run even with skip
                raise DataError(f"{path}:{lineno}: bad {fmt} header ({e})") from None
            yield lineno, DataError(f"{path}:{lineno}: bad {fmt} line ({e})")
            continue
        if width is None:
            width, first = len(cells), lineno
            if at_header:
                names = _header(path, lineno, cells, needed, layout)
                continue
            _positions_fit(path, lineno, cells, needed)
        if len(cells) != width:
            yield lineno, _width_error(f"{path}:{lineno}", cells, width, first, names, needed, layout)
            continue
        yield lineno, dict(zip(names, cells)) if names else dict(enumerate(cells))


def _header(path: Path, lineno: int, cells: list[str], needed: tuple, layout: Layout) -> list[str]:
    where, shown = f"{path}:{lineno}", ", ".join(cells)
    missing = [c for c in needed if c not in cells]
    if missing:
        message = f"{where}: the header has no column {missing[0]!r} (columns: {shown})"
        if len(missing) == len(needed) and any(c.strip() in layout.labels or c.strip().isdigit() for c in cells):
            message += (
                f"; line {lineno} looks like data: for a file without a header, set dataset.header=false "
                "and give dataset.columns as 0-based positions (text_a=0, ...)"
            )
        raise DataError(message)
    twice = [c for c in needed if cells.count(c) > 1]
    if twice:
        raise DataError(f"{where}: the header has column {twice[0]!r} twice (columns: {shown})")
    return cells


def _positions_fit(path: Path, lineno: int, cells: list[str], needed: tuple) -> None:
    """header=false: the first record sets the width, so a position past it fails every record alike."""
    beyond = [p for p in needed if p >= len(cells)]
    if beyond:
        raise DataError(
            f"{path}:{lineno}: the first row has {_fields(len(cells))}, but dataset.columns names "
            f"position {max(beyond)} (0-based), so no line can have it; check dataset.columns and dataset.header"
        )


def _fields(n: int) -> str:
    return f"{n} field{'s' * (n != 1)}"


def _width_error(where, cells, width, first, names, needed, layout) -> DataError:
    than = f"the header (line {first}) has {width}" if names else f"line {first} has {width}"
    counts = f"the line has {_fields(len(cells))}, {than}"
    if len(cells) < width:
        present = names[: len(cells)] if names else range(len(cells))
        lost = [c for c in needed if c not in present]
        if lost:
            return DataError(f"{where}: missing {_field_name(lost[0])} ({counts})")
        return DataError(f"{where}: {counts}")
    extra = {"\t": "a tab", ",": "a comma"}[FORMATS[layout.fmt]]
    hint = f"; {extra} inside a field?" + (" Quote the field and set dataset.quoting=csv" * (layout.quoting == "none"))
    return DataError(f"{where}: {counts}{hint}")


def _field_name(field: str | int) -> str:
    return f"column {field}" if isinstance(field, int) else f"field {field!r}"


class SkippedLines:
    """Lines left out of a split: bad ones (dataset.on_bad_line=skip), counted, the first few logged with
    file:line and why; and lines without a gold label (dataset.no_gold_label), which are no bad lines."""

    LOG_FIRST = 5

    def __init__(self):
        self.count = 0
        self.no_gold_label = 0

    def add(self, error: DataError) -> None:
        self.count += 1
        if self.count <= self.LOG_FIRST:
            log.warning("skipped %s", error)


def _line(number: int) -> str:
    """`line 4`, or a table's `row 4` (a Row says so itself: afqmc/data/tables.py)."""
    return str(number) if isinstance(number, Row) else f"line {number}"


class _UniqueIds:
    """The ids of a split that is predicted: two lines with one id would be two answers under one name.
    Ids are compared as text, since a CSV's "1" and a JSON line's 1 name the same line in a submission."""

    def __init__(self, path: Path, column):
        self.path, self.column, self.seen = path, column, {}

    def add(self, value, lineno: int, positional: bool) -> None:
        key = str(value)
        if key in self.seen:
            first = self.seen[key]
            raise DataError(
                f"{self.path}:{lineno}: duplicate prediction id {value!r}: {_line(first[0])} ({self._how(*first[1:])}) "
                f"and {_line(lineno)} ({self._how(value, positional)}); each line needs an id of its own"
            )
        self.seen[key] = (lineno, value, positional)

    def _how(self, value, positional: bool) -> str:
        # (positions alone never clash: a position is one only with dataset.columns.id set)
        return f"no {_field_name(self.column)}, numbered {value} by position" if positional else f"id {value!r}"


def read_examples(path: Path, cfg, labeled: bool, skipped: SkippedLines | None = None) -> Iterator[dict]:
    """Examples {text_a, text_b, label, id} from one split file; label is the class index or None, text_b
    None for a single-sentence task (columns.text_b=null).

    A bad line raises its DataError; with dataset.on_bad_line=skip it is left out (and counted in `skipped`).
    A line whose label is one of dataset.no_gold_label is left out and counted. An unlabeled split (the one
    that is predicted) must have unique ids: a duplicate stops the run whatever on_bad_line says.
    """
    # plain Python values: OmegaConf attribute access per line was most of the reading time
    cols = SimpleNamespace(**{"label": None, "id": None, **OmegaConf.to_container(cfg.columns)})
    label_map = {str(k): v for k, v in cfg.get("label_map", {}).items()}
    no_gold = {str(v) for v in cfg.get("no_gold_label") or ()}
    skip = cfg.get("on_bad_line", "error") == "skip"  # .get: afqmc.predict's config has neither key
    layout = Layout.of(cfg)
    needed = (cols.text_a, cols.text_b, cols.label if labeled else None)
    if not labeled and not layout.header:  # a headerless test file's id column must be there
        needed += (cols.id,)
    ids = None if labeled else _UniqueIds(path, cols.id)
    skipped = skipped if skipped is not None else SkippedLines()
    for n, (lineno, row) in enumerate(_rows(path, layout, tuple(c for c in needed if c is not None))):
        where = f"{path}:{lineno}"
        try:
            example = _example(row, where, cols, label_map, labeled, no_gold)
            if example is not None:
                example["id"], positional = _id(row, cols.id, n, where, check=not labeled)
        except DataError as e:
            if n == 0 and _header_like(row, layout, label_map):
                e = DataError(f"{e}; line {lineno} looks like a header: set dataset.header=true, columns by name")
            if not skip:
                raise e from None
            skipped.add(e)
            continue
        if example is None:
            skipped.no_gold_label += 1
            continue
        if ids is not None:
            ids.add(example["id"], lineno, positional)
        yield example


def _header_like(row, layout: Layout, label_map: dict) -> bool:
    """dataset.header=false on a first row of names: no cell empty, a number or a label."""
    if not (FORMATS[layout.fmt] and not layout.header and isinstance(row, dict)):
        return False
    cells = [str(c).strip() for c in row.values()]
    return all(c and not c.replace(".", "", 1).isdigit() and c not in label_map for c in cells)


def has_labels(path: Path, cfg) -> bool:
    """Whether the file has labels: its first record (a CSV/TSV header names the columns of every one) has
    the label column."""
    label = cfg.columns.get("label")
    for _, row in _rows(path, Layout.of(cfg)):
        if not isinstance(row, DataError):
            return label is not None and row.get(label) is not None
    return False


def _example(row: dict | DataError, where: str, cols, label_map: dict, labeled: bool, no_gold: set) -> dict | None:
    """The example of one record (its id aside), or None for a line without a gold label."""
    if isinstance(row, DataError):
        raise row
    texts = [_text(row, field, where) for field in (cols.text_a, cols.text_b) if field is not None]
    label = None
    if labeled:
        if row.get(cols.label) is None:
            raise DataError(f"{where}: missing {_field_name(cols.label)} (labels are required in this split)")
        raw = str(row[cols.label]).strip()
        if raw in no_gold:
            return None
        if raw not in label_map:
            raise DataError(f"{where}: label {raw!r} is not in dataset.label_map (allowed: {', '.join(label_map)})")
        label = label_map[raw]
    return {"text_a": texts[0], "text_b": texts[1] if len(texts) > 1 else None, "label": label, "id": None}


def _text(row: dict, field, where: str) -> str:
    text = row.get(field)
    if text is None:
        raise DataError(f"{where}: missing {_field_name(field)} (fields present: {', '.join(map(str, row))})")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: {_field_name(field)} must be a non-empty string, got {text!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: the tokenizer cannot take it
        raise DataError(f"{where}: {_field_name(field)} has an unpaired surrogate (a bad \\u escape)") from None
    if not any(not c.isspace() and unicodedata.category(c)[0] != "C" for c in text):
        # NULs and other control characters: the tokenizer drops them, and would train on an empty sentence
        raise DataError(f"{where}: {_field_name(field)} has only control characters ({text!r}): expected text")
    return text


def _id(row: dict, column, n: int, where: str, check: bool) -> tuple[object, bool]:
    """(id, whether it is the line's position n): a line without one (no field, null, an empty cell) is
    numbered by its position among the records. `check`: a predicted split's ids must be text or integers."""
    value = None if column is None else row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        return n, True
    if check and (isinstance(value, bool) or not isinstance(value, (str, int))):
        raise DataError(f"{where}: {_field_name(column)} (the id) must be a string or an integer, got {value!r}")
    return value, False
