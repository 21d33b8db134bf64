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

:func:`iter_events` detects the format from the file name and content. A directory
is accepted when it holds exactly one known data file (e.g. ``movielens-100k/``).
Datasets are read in place from ``Settings.datasets_dir``; never copy them.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import logging
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from personalization import events as ev
from personalization.settings import Settings, load_settings

log = logging.getLogger(__name__)

TAOBAO = "taobao"
MOVIELENS_100K = "movielens"
MOVIELENS_CSV = "movielens_csv"
JSONL = "jsonl"
FORMATS = (TAOBAO, MOVIELENS_100K, MOVIELENS_CSV, JSONL)

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


def _open_text(path: Path, encoding: str = "utf-8") -> IO[str]:
    if _is_gzip(path):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return path.open("r", encoding=encoding, newline="")


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


def _iter_taobao_rows(path: Path) -> Generator[TaobaoRow, None, None]:
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
            except ValueError:
                skipped += 1
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


def iter_taobao(path: str | Path) -> Iterator[dict[str, Any]]:
    for row in _iter_taobao_rows(_resolve(path)):
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


def iter_movielens(path: str | Path, *, demographics: bool = True) -> Iterator[dict[str, Any]]:
    """``rating`` events from a MovieLens 100K ``u.data`` file."""
    p = _resolve(path)
    genres = movielens_item_genres(p.parent)
    users = movielens_users(p.parent) if demographics else {}
    skipped = 0
    with _open_text(p, encoding="latin-1") as fh:
        for line in fh:
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4 or not all(f.isdigit() for f in fields):
                skipped += 1
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


def iter_movielens_csv(path: str | Path) -> Iterator[dict[str, Any]]:
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
        for rec in csv.DictReader(fh):
            user, item, rating, ts = rec["userId"], rec["movieId"], rec["rating"], rec["timestamp"]
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


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Event objects, one per line; blank lines are skipped, anything else must parse."""
    p = _resolve(path)
    with _open_text(p) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{p}:{line_no}: invalid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise ValueError(f"{p}:{line_no}: not a JSON object")
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


# --- any format ------------------------------------------------------------------------


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
) -> Iterator[dict[str, Any]]:
    """Events of a Taobao, MovieLens or JSON-lines file (format detected unless ``fmt``).

    ``sort_by_time`` reads the whole file and sorts it (stable, by event time) before
    ``limit`` applies, so the result is the earliest ``limit`` events.
    """
    fmt = fmt or detect_format(path)
    source: Iterator[dict[str, Any]]
    if fmt == TAOBAO:
        source = iter_taobao(path)
    elif fmt == MOVIELENS_100K:
        source = iter_movielens(path, demographics=demographics)
    elif fmt == MOVIELENS_CSV:
        source = iter_movielens_csv(path)
    elif fmt == JSONL:
        source = iter_jsonl(path)
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if sort_by_time:
        source = iter(sorted(source, key=_time_key))
    try:
        yield from itertools.islice(source, limit)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
