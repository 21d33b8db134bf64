"""Replay real interaction logs as wire-format events.

Readers (each yields dicts in the JSON wire format of :mod:`personalization.events`):

* Taobao UserBehavior CSV (plain or gzip, no header):
  ``user,item,category,behavior,timestamp_s`` with behavior ``pv`` → product_view,
  ``cart`` → add_to_cart, ``fav`` → favorite, ``buy`` → purchase. The event id is
  derived from the row: ``tb-{user}-{item}-{ts}-{behavior}-{line_no}``.
* MovieLens 100K ``u.data`` (tab separated ``user item rating ts``) → ``rating``
  events with ``properties.rating``. When ``u.item``/``u.genre`` sit beside it, the
  category is the movie's first genre (lower case, as normalization would make it);
  with ``u.user`` the properties carry ``age_band``, ``gender`` and ``occupation``.
* MovieLens "latest" ``ratings.csv`` (header ``userId,movieId,rating,timestamp``,
  plain or gzip) with ``movies.csv`` beside it for the first genre.
* Our own JSON lines: one event object per line.
* Any other CSV (a shop's own export) through :class:`MappedCsvReader`: a column
  mapping (``event_time=ts,user_id=uid,event_type=action,item_id=sku``), a value
  mapping for event types (``pv=product_view,search=-``, ``-`` skips the row) and a
  time format (epoch s / ms, ISO 8601 or a strptime pattern; detected by default).

Every reader has one interface (:class:`EventReader`: ``read(path, bad_rows)``;
:data:`READERS` holds the built-in ones by format). Rows a reader cannot turn into an
event are counted in :class:`BadRows` with their line number and reason and the replay
goes on. :func:`iter_events` detects the format from the file name and content unless
given a reader. A directory is accepted when it holds exactly one known data file
(e.g. ``movielens-100k/``).
Datasets are read in place from ``Settings.datasets_dir``; never copy them.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
import math
from collections import Counter
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

from personalization import events as ev
from personalization.settings import Settings, load_settings

log = logging.getLogger(__name__)

TAOBAO = "taobao"
MOVIELENS_100K = "movielens"
MOVIELENS_CSV = "movielens_csv"
JSONL = "jsonl"
FORMATS = (TAOBAO, MOVIELENS_100K, MOVIELENS_CSV, JSONL)
# The generic reader's name (never detected: it needs a mapping).
MAPPED_CSV = "csv"

# Paths of the shared datasets, relative to Settings.datasets_dir.
TAOBAO_SAMPLE = "taobao-userbehavior-sample/UserBehavior_sample.csv.gz"
MOVIELENS_100K_DATA = "movielens-100k/u.data"
MOVIELENS_SMALL_RATINGS = "movielens-latest-small/ratings.csv.gz"

TAOBAO_BEHAVIORS = {
    "pv": ev.PRODUCT_VIEW,
    "cart": ev.ADD_TO_CART,
    "fav": ev.FAVORITE,
    "buy": ev.PURCHASE,
}
_MOVIELENS_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


def dataset_path(relative: str, settings: Settings | None = None) -> Path:
    """A path inside the shared datasets folder (``Settings.datasets_dir``)."""
    return Path((settings or load_settings()).datasets_dir) / relative


# --- files -----------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_text(path: Path, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors=errors, newline="")
    return path.open("r", encoding=encoding, errors=errors, newline="")


# --- bad rows --------------------------------------------------------------------------


@dataclass(slots=True)
class BadRows:
    """Rows a reader could not turn into an event: counted by reason, the first kept.

    ``skipped`` counts rows dropped on purpose (event types mapped to ``-``), by value.
    """

    keep: int = 20
    count: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, line_no: int, reason: str, detail: str = "") -> None:
        self.count += 1
        self.by_reason[reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append((line_no, f"{reason}: {detail}" if detail else reason))

    def summary(self, limit: int = 5) -> str:
        """One paragraph for a person: counts by reason and the first lines."""
        if not self.count:
            return "no bad rows"
        reasons = ", ".join(f"{r} {n}" for r, n in self.by_reason.most_common())
        lines = "; ".join(f"line {n}: {why}" for n, why in self.examples[:limit])
        return f"{self.count} bad rows ({reasons}); first: {lines}"


class EventReader(Protocol):
    """Reads one file into wire-format event dicts (see :mod:`personalization.events`).

    Rows it cannot read go to ``bad_rows`` (line number + reason); it raises only when
    the file as a whole cannot be read as its format (e.g. a mapped column is absent).
    """

    @property
    def name(self) -> str: ...

    def read(self, path: Path, bad_rows: BadRows) -> Iterator[dict[str, Any]]: ...


def _first_line(path: Path) -> str:
    with _open_text(path, encoding="latin-1") as fh:
        for line in fh:
            if line.strip():
                return line.strip()
    return ""


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        return p
    candidates = [
        p / "u.data",
        p / "ratings.csv.gz",
        p / "ratings.csv",
        *sorted(p.glob("UserBehavior*.csv*")),
        *sorted(p.glob("*.jsonl")),
        *sorted(p.glob("*.ndjson")),
    ]
    found = [c for c in candidates if c.is_file()]
    if len(found) != 1:
        raise ValueError(f"{p}: expected exactly one known data file, found {found}")
    return found[0]


def detect_format(path: str | Path) -> str:
    """One of :data:`FORMATS`, from the file name and its first non-empty line."""
    p = _resolve(path)
    name = p.name.lower()
    for suffix in (".gz", ".gzip"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return JSONL
    if name == "u.data":
        return MOVIELENS_100K
    first = _first_line(p)
    if first.startswith("{"):
        return JSONL
    fields = first.split("\t")
    if len(fields) == 4 and all(f.strip().isdigit() for f in fields):
        return MOVIELENS_100K
    if first.replace(" ", "").lower().startswith("userid,movieid,rating,timestamp"):
        return MOVIELENS_CSV
    fields = first.split(",")
    if len(fields) == 5 and fields[3].strip().lower() in TAOBAO_BEHAVIORS:
        return TAOBAO
    if name.startswith("userbehavior"):
        return TAOBAO
    raise ValueError(f"{p}: unknown event file format (first line {first[:80]!r})")


# --- Taobao ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaobaoRow:
    """One parsed UserBehavior line, for tests that compute features independently."""

    user_id: str
    item_id: str
    category_id: str
    behavior: str
    timestamp_s: int
    line_no: int

    @property
    def event_type(self) -> str:
        return TAOBAO_BEHAVIORS[self.behavior]

    @property
    def event_time_ms(self) -> int:
        return self.timestamp_s * 1000

    @property
    def event_id(self) -> str:
        return f"tb-{self.user_id}-{self.item_id}-{self.timestamp_s}-{self.behavior}-{self.line_no}"

    def to_event(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "event_type": self.event_type,
            "item_id": self.item_id,
            "category": self.category_id,
            "event_time": self.event_time_ms,
        }


def _iter_taobao_rows(
    path: Path, bad_rows: BadRows | None = None
) -> Generator[TaobaoRow, None, None]:
    skipped = 0
    with _open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            fields = line.strip().split(",")
            if fields == [""]:
                continue
            try:
                if len(fields) != 5:
                    raise ValueError("expected 5 fields")
                user, item, category, behavior, ts = (f.strip() for f in fields)
                behavior = behavior.lower()
                if behavior not in TAOBAO_BEHAVIORS or not (user and item and category):
                    raise ValueError("bad behavior or empty id")
                row = TaobaoRow(user, item, category, behavior, int(ts), line_no)
            except ValueError as exc:
                skipped += 1
                if bad_rows is not None:
                    bad_rows.add(line_no, "malformed_taobao_line", str(exc))
                continue
            yield row
    if skipped:
        log.warning("%s: skipped %d malformed Taobao lines", path, skipped)


def load_taobao(path: str | Path, limit: int | None = None) -> list[TaobaoRow]:
    """All (or the first ``limit``) valid rows of a UserBehavior file, in file order.

    The same rows, in the same order, that :func:`iter_events` turns into events.
    """
    rows = _iter_taobao_rows(_resolve(path))
    try:
        return list(itertools.islice(rows, limit))
    finally:
        rows.close()


def iter_taobao(path: str | Path, bad_rows: BadRows | None = None) -> Iterator[dict[str, Any]]:
    for row in _iter_taobao_rows(_resolve(path), bad_rows):
        yield row.to_event()


# --- MovieLens -------------------------------------------------------------------------


def age_band(age: int) -> str:
    """The age bands used throughout (the generator uses the same labels)."""
    if age < 18:
        return "under-18"
    for upper, label in ((24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"), (64, "55-64")):
        if age <= upper:
            return label
    return "65+"


def _movielens_genres(folder: Path) -> list[str]:
    genre_file = folder / "u.genre"
    if not genre_file.is_file():
        return list(_MOVIELENS_GENRES)
    by_index: dict[int, str] = {}
    with genre_file.open(encoding="latin-1") as fh:
        for line in fh:
            name, _, index = line.strip().rpartition("|")
            if name and index.isdigit():
                by_index[int(index)] = name
    return [by_index[i] for i in sorted(by_index)]


def movielens_item_genres(folder: str | Path) -> dict[str, str]:
    """movie id → first genre name (as in ``u.genre``) from ``u.item``; {} if absent."""
    folder = Path(folder)
    item_file = folder / "u.item"
    if not item_file.is_file():
        return {}
    genres = _movielens_genres(folder)
    out: dict[str, str] = {}
    with item_file.open(encoding="latin-1") as fh:
        for line in fh:
            fields = line.rstrip("\r\n").split("|")
            if len(fields) < 5 + len(genres):
                continue
            flags = fields[5 : 5 + len(genres)]
            first = next((genres[i] for i, flag in enumerate(flags) if flag.strip() == "1"), "")
            if first:
                out[fields[0].strip()] = first
    return out


def movielens_users(folder: str | Path) -> dict[str, dict[str, str]]:
    """user id → {age_band, gender, occupation} from ``u.user``; {} if absent."""
    user_file = Path(folder) / "u.user"
    if not user_file.is_file():
        return {}
    out: dict[str, dict[str, str]] = {}
    with user_file.open(encoding="latin-1") as fh:
        for line in fh:
            fields = line.strip().split("|")
            if len(fields) < 4 or not fields[1].isdigit():
                continue
            out[fields[0]] = {
                "age_band": age_band(int(fields[1])),
                "gender": fields[2].strip().upper(),
                "occupation": fields[3].strip(),
            }
    return out


def iter_movielens(
    path: str | Path, *, demographics: bool = True, bad_rows: BadRows | None = None
) -> Iterator[dict[str, Any]]:
    """``rating`` events from a MovieLens 100K ``u.data`` file."""
    p = _resolve(path)
    genres = movielens_item_genres(p.parent)
    users = movielens_users(p.parent) if demographics else {}
    skipped = 0
    with _open_text(p, encoding="latin-1") as fh:
        for line_no, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4 or not all(f.isdigit() for f in fields):
                skipped += 1
                if bad_rows is not None:
                    bad_rows.add(line_no, "malformed_movielens_line", "expected 4 integers")
                continue
            user, item, rating, ts = fields
            event: dict[str, Any] = {
                "event_id": f"ml-{user}-{item}-{ts}",
                "user_id": user,
                "event_type": ev.RATING,
                "item_id": item,
                "event_time": int(ts) * 1000,
                "properties": {"rating": rating, **users.get(user, {})},
            }
            genre = genres.get(item)
            if genre:
                event["category"] = genre.lower()
            yield event
    if skipped:
        log.warning("%s: skipped %d malformed MovieLens lines", p, skipped)


def iter_movielens_csv(
    path: str | Path, bad_rows: BadRows | None = None
) -> Iterator[dict[str, Any]]:
    """``rating`` events from a MovieLens ``ratings.csv`` (+ ``movies.csv`` genres)."""
    p = _resolve(path)
    genres: dict[str, str] = {}
    movies = p.parent / "movies.csv"
    if movies.is_file():
        with _open_text(movies) as fh:
            for rec in csv.DictReader(fh):
                first = (rec.get("genres") or "").split("|")[0].strip()
                if first and first != "(no genres listed)":
                    genres[rec["movieId"]] = first
    with _open_text(p) as fh:
        reader = csv.DictReader(fh)
        for rec in reader:
            user, item, rating, ts = rec["userId"], rec["movieId"], rec["rating"], rec["timestamp"]
            if not (user and item and rating and ts and ts.isdigit()):
                if bad_rows is None:
                    raise ValueError(f"{p}:{reader.line_num}: malformed rating line")
                bad_rows.add(reader.line_num, "malformed_movielens_line", "empty or bad field")
                continue
            event: dict[str, Any] = {
                "event_id": f"mls-{user}-{item}-{ts}",
                "user_id": user,
                "event_type": ev.RATING,
                "item_id": item,
                "event_time": int(ts) * 1000,
                "properties": {"rating": rating},
            }
            if item in genres:
                event["category"] = genres[item].lower()
            yield event


# --- JSON lines ------------------------------------------------------------------------


def iter_jsonl(path: str | Path, bad_rows: BadRows | None = None) -> Iterator[dict[str, Any]]:
    """Event objects, one per line; blank lines are skipped, anything else must parse:
    a line that does not raises ValueError, or is counted in ``bad_rows`` when given."""
    p = _resolve(path)
    with _open_text(p) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
                if not isinstance(value, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if bad_rows is None:
                    raise ValueError(f"{p}:{line_no}: invalid JSON: {exc}") from None
                bad_rows.add(line_no, "invalid_json", str(exc)[:200])
                continue
            yield value


def _open_write(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8")
    return path.open("w", encoding="utf-8")


def write_jsonl(events: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write events as compact JSON lines (gzip when the name ends in .gz); the count."""
    p = Path(path)
    count = 0
    with _open_write(p) as fh:
        for event in events:
            fh.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
            fh.write("\n")
            count += 1
    return count


# --- any CSV, through a column mapping -------------------------------------------------

# Wire fields a column can feed (``properties.NAME`` too); the first three are required.
REQUIRED_FIELDS = ("user_id", "event_type", "event_time")
MAPPABLE_FIELDS = (
    *REQUIRED_FIELDS,
    "event_id",
    "item_id",
    "category",
    "price",
    "quantity",
    *ev.CONTEXT_FIELDS,
)
PROPERTY_PREFIX = "properties."
SKIP = "-"  # an event type mapped to this is skipped on purpose (not a bad row)
TIME_FORMATS = ("auto", "s", "ms", "iso")  # or a strptime pattern ("%d/%m/%Y %H:%M")
# Rows are validated as the job would, except for the distance to the wall clock (a
# replay re-times them; --keep-times warns about the admission window separately).
_ANY_TIME = ev.ValidationLimits(max_future_skew_ms=2**62, max_event_age_ms=2**62)


def _pairs(spec: str, what: str) -> dict[str, str]:
    """``a=b,c=d`` as a dict; ValueError naming ``what`` on a malformed entry."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{what}: expected NAME=VALUE, got {part.strip()!r}")
        if key in out:
            raise ValueError(f"{what}: {key!r} given twice")
        out[key] = value
    return out


def detect_time_format(value: str) -> str:
    """``s`` or ``ms`` for an epoch number (below 1e11 = seconds), else ``iso``."""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return "iso"
    return "s" if abs(number) < 1e11 else "ms"


def parse_time_ms(value: str, time_format: str) -> int:
    """Milliseconds since the epoch of ``value`` read as ``time_format``; ValueError."""
    text = value.strip()
    if not text:
        raise ValueError("empty time")
    if time_format in ("s", "ms"):
        number = float(text)
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{text!r} is not a time")
        return round(number * 1000) if time_format == "s" else round(number)
    if time_format == "iso":
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    elif "%" in time_format:
        parsed = datetime.strptime(text, time_format)
    else:
        raise ValueError(f"unknown time format {time_format!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class CsvMapping:
    """How a CSV's columns and values become events (see :meth:`parse`)."""

    # wire field (or properties.NAME) -> column name
    fields: dict[str, str]
    # source value -> canonical event type, or SKIP; unmapped values pass through the
    # usual aliases (pv, buy, cart, ...) and are bad rows when still unknown
    event_types: dict[str, str] = field(default_factory=dict)
    time_format: str = "auto"
    # names of a headerless file's columns; empty = the first row is the header
    columns: tuple[str, ...] = ()
    delimiter: str = ""  # empty = sniffed from the first line (, ; tab |)

    @classmethod
    def parse(
        cls,
        fields: str,
        event_types: str = "",
        time_format: str = "auto",
        columns: str = "",
        delimiter: str = "",
    ) -> CsvMapping:
        """From the command line's ``--map``, ``--event-types``, ``--time-format``,
        ``--columns`` and ``--delimiter``; ValueError says what is wrong."""
        mapped = _pairs(fields, "--map")
        for name in mapped:
            if name not in MAPPABLE_FIELDS and not (
                name.startswith(PROPERTY_PREFIX) and len(name) > len(PROPERTY_PREFIX)
            ):
                raise ValueError(
                    f"--map: unknown field {name!r}; fields: {', '.join(MAPPABLE_FIELDS)}, "
                    f"{PROPERTY_PREFIX}NAME"
                )
        missing = [name for name in REQUIRED_FIELDS if name not in mapped]
        if missing:
            raise ValueError(f"--map: {', '.join(missing)} must be mapped")
        types = _pairs(event_types, "--event-types")
        for source, target in types.items():
            if target == SKIP:
                continue
            try:
                types[source] = ev.normalize_event_type(target)
            except ev.EventRejected:
                raise ValueError(
                    f"--event-types: {source}={target}: {target!r} is not an event type "
                    f"({', '.join(sorted(ev.ACCEPTED_TYPES))}, or {SKIP} to skip)"
                ) from None
        if time_format not in TIME_FORMATS and "%" not in time_format:
            raise ValueError(
                f"--time-format: {time_format!r}: one of {', '.join(TIME_FORMATS)} "
                "or a strptime pattern such as %Y-%m-%d %H:%M:%S"
            )
        names = tuple(c.strip() for c in columns.split(",")) if columns.strip() else ()
        if len(delimiter) > 1 and delimiter != "\\t":
            raise ValueError(f"--delimiter: one character, not {delimiter!r}")
        return cls(
            fields=mapped,
            event_types=types,
            time_format=time_format,
            columns=names,
            delimiter="\t" if delimiter == "\\t" else delimiter,
        )


class _RowError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class MappedCsvReader:
    """Any CSV through a :class:`CsvMapping` (an :class:`EventReader`).

    Each row becomes an event validated as the job validates (time distance to the
    clock aside) and normalized to the wire form; a row that fails (short row, empty
    user, unknown event type, unreadable time, item event without item, ...) is a bad
    row. Without a mapped ``event_id`` the id is ``<file stem>-<line>``, so sending the
    same file twice dedupes. ``auto`` time format is decided on the first readable
    time and then holds for the file.
    """

    name = MAPPED_CSV

    def __init__(self, mapping: CsvMapping) -> None:
        self.mapping = mapping

    def read(self, path: Path, bad_rows: BadRows) -> Iterator[dict[str, Any]]:
        p = _resolve(path)
        mapping = self.mapping
        time_format = mapping.time_format
        # Excel's BOM, and bytes that are not UTF-8 become U+FFFD instead of a crash.
        with _open_text(p, encoding="utf-8-sig", errors="replace") as fh:
            delimiter = mapping.delimiter or _sniff_delimiter(fh)
            reader = csv.reader(fh, delimiter=delimiter)
            header = list(mapping.columns)
            if not header:
                header = [h.strip() for h in next(reader, [])]
            index = {name: i for i, name in enumerate(header)}
            absent = sorted({c for c in mapping.fields.values() if c not in index})
            if absent:
                raise ValueError(
                    f"{p}: mapped column(s) {', '.join(map(repr, absent))} not in the "
                    f"{'--columns' if mapping.columns else 'header'} {header}"
                )
            columns = {target: index[column] for target, column in mapping.fields.items()}
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    bad_rows.add(reader.line_num, "csv_error", str(exc))
                    continue
                if not any(cell.strip() for cell in row):
                    continue
                try:
                    if time_format == "auto":
                        stamp = _cell(row, columns["event_time"], "event_time")
                        if stamp:
                            time_format = detect_time_format(stamp)
                    event = self._event(p, row, columns, time_format, reader.line_num)
                except _RowError as exc:
                    bad_rows.add(reader.line_num, exc.reason, str(exc))
                    continue
                if isinstance(event, str):
                    bad_rows.skipped[event] += 1
                    continue
                yield event
        if bad_rows.count:
            log.warning("%s: %s", p, bad_rows.summary())

    def _event(
        self,
        path: Path,
        row: list[str],
        columns: dict[str, int],
        time_format: str,
        line_no: int,
    ) -> dict[str, Any] | str:
        """The row's event, or the source event type when that type is skipped."""
        values = {target: _cell(row, i, target) for target, i in columns.items()}
        raw_type = values.pop("event_type")
        mapped = self.mapping.event_types
        event_type = mapped.get(raw_type, mapped.get(raw_type.lower(), raw_type))
        if event_type == SKIP:
            return raw_type
        stamp = values.pop("event_time")
        try:
            event_time_ms = parse_time_ms(stamp, time_format)
        except (ValueError, OverflowError) as exc:
            raise _RowError(
                "invalid_event_time", f"{stamp[:40]!r} is not a {time_format} time ({exc})"
            ) from None
        payload: dict[str, Any] = {
            "event_type": event_type,
            "event_time": event_time_ms,
            "event_id": values.pop("event_id", "") or f"{_stem(path)}-{line_no}",
        }
        context: dict[str, str] = {}
        properties: dict[str, str] = {}
        for target, value in values.items():
            if not value:
                continue
            if target.startswith(PROPERTY_PREFIX):
                properties[target.removeprefix(PROPERTY_PREFIX)] = value
            elif target in ev.CONTEXT_FIELDS:
                context[target] = value
            else:
                payload[target] = value
        if context:
            payload["context"] = context
        if properties:
            payload["properties"] = properties
        try:
            event = ev.validate_event(payload, now_ms=event_time_ms, limits=_ANY_TIME)
        except ev.EventRejected as exc:
            raise _RowError(exc.rejection.reason, exc.rejection.detail) from None
        return event.to_json_dict()


def _cell(row: list[str], i: int, target: str) -> str:
    if i >= len(row):
        raise _RowError("missing_column", f"{len(row)} columns, {target} is column {i + 1}")
    return row[i].strip()


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".gzip", ".csv", ".tsv", ".txt"):
        name = name.removesuffix(suffix)
    return name or "csv"


def _sniff_delimiter(fh: IO[str]) -> str:
    """The delimiter of the first line (, ; tab |), without consuming the file."""
    first = ""
    position = fh.tell() if fh.seekable() else None
    first = fh.readline()
    if position is not None:
        fh.seek(position)
    counts = {d: first.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


# --- any format ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BuiltinReader:
    """A built-in format's reader behind the :class:`EventReader` interface. Without a
    ``bad_rows`` sink it logs (Taobao, MovieLens) or raises (JSON lines) on bad lines."""

    name: str
    demographics: bool = True

    def read(self, path: Path, bad_rows: BadRows | None) -> Iterator[dict[str, Any]]:
        if self.name == TAOBAO:
            return iter_taobao(path, bad_rows)
        if self.name == MOVIELENS_100K:
            return iter_movielens(path, demographics=self.demographics, bad_rows=bad_rows)
        if self.name == MOVIELENS_CSV:
            return iter_movielens_csv(path, bad_rows)
        return iter_jsonl(path, bad_rows)


READERS: dict[str, EventReader] = {fmt: _BuiltinReader(fmt) for fmt in FORMATS}


def _time_key(event: dict[str, Any]) -> int:
    try:
        return ev.parse_event_time_ms(event.get("event_time", event.get("event_time_ms")))
    except ev.EventRejected:
        return -1  # unparseable times sort first, in file order


def iter_events(
    path: str | Path,
    limit: int | None = None,
    sort_by_time: bool = False,
    *,
    fmt: str | None = None,
    demographics: bool = True,
    reader: EventReader | None = None,
    bad_rows: BadRows | None = None,
) -> Iterator[dict[str, Any]]:
    """Events of a file through ``reader`` (default: the built-in reader of ``fmt``, or
    of the format detected from the file).

    Without ``bad_rows`` the built-in readers log their malformed lines and a JSON-lines
    file with one raises; with it, every reader counts them there and goes on.
    ``sort_by_time`` reads the whole file and sorts it (stable, by event time) before
    ``limit`` applies, so the result is the earliest ``limit`` events.
    """
    if reader is None:
        fmt = fmt or detect_format(path)
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        reader = _BuiltinReader(fmt, demographics)
    source: Iterator[dict[str, Any]]
    if isinstance(reader, _BuiltinReader):
        source = reader.read(_resolve(path), bad_rows)
    else:
        source = reader.read(_resolve(path), BadRows() if bad_rows is None else bad_rows)
    if sort_by_time:
        source = iter(sorted(source, key=_time_key))
    try:
        yield from itertools.islice(source, limit)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
