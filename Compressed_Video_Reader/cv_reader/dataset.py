"""The one reader of dataset files for Stage 1, Stage 2 and training.

Why one module: the batch tools and the trainer must agree on which records a dataset
path names (same formats, same sampling, same order, same row index for the shard key),
and a broken record must cost one log line, not the run.

Formats of ``path``:

* ``.jsonl``: one JSON object per line; blank lines are skipped.
* ``.json``: a top-level JSON array, streamed element by element with a chunked reader
  (memory is bounded by the largest element, never by the file).
* A brace list, as LLaVA-NeXT accepts it: ``/data/{a,b}.json`` is ``/data/a.json`` then
  ``/data/b.json`` (any suffix; several groups expand left to right like the shell).
* ``.yaml`` / ``.yml``: a mixture ``datasets: [{json_path: ..., sampling_strategy: ...}]``.
  ``sampling_strategy`` is ``all`` (the default), ``first:N``, ``end:N`` or ``random:N``
  where N is a record count or a percentage (``first:10%`` takes ``ceil(10 * len / 100)``
  records, as LLaVA-NeXT computes it). A relative ``json_path`` is looked for in the
  YAML file's folder first (so a mixture and its files can move together), then in the
  working directory (LLaVA-NeXT's rule, so upstream mixtures read as they are); when
  neither exists the error names both paths tried. ``json_path`` may itself be a brace
  list; each file it names is resolved and sampled on its own.

``end``, ``random`` and percentages need the record count: the file is read once to count
and once to yield, so no file is ever held whole. ``random:N`` picks N records uniformly
with an RNG seeded from ``seed`` and the source's position in the list (same seed, same
records) and yields them in file order. Counts and N refer to good records: bad entries
are never picked.

Every record comes with its provenance (:class:`Record`: file, 1-based start line, index
in its file). A malformed line or an entry that is not a JSON object is logged once
(logger ``cv_reader.dataset``, WARNING, ``file:line: reason``), skipped and counted by the
reader; a syntax error inside a JSON array cannot be resynchronised, so the rest of that
file is given up (logged and counted once) and the next file is read. A record whose
fields have the wrong type fails :func:`check_record`, the one field check of the tools
and the trainer; a tool hands it (or any record it cannot use) back with
:meth:`DatasetReader.reject`, which logs ``file:line (id <id>): problem`` and counts it
with the malformed lines. Configuration errors (a bad mixture, a missing file, an
unsupported suffix, a ``.json`` file that is not an array) raise when the reader is
built, before any record is read.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import yaml

log = logging.getLogger("cv_reader.dataset")

DATA_SUFFIXES = (".json", ".jsonl")
MIXTURE_SUFFIXES = (".yaml", ".yml")
STRATEGIES = ("all", "first", "end", "random")

_CHUNK = 1 << 20  # characters read at a time from a JSON array
# A decode that ends (or fails) this close to the end of the buffer may change once more
# text is read: a number, a literal or an escape can be cut by the chunk boundary.
_MARGIN = 32
_WS = re.compile(r"[ \t\n\r]*")
_BRACES = re.compile(r"\{([^{}]*,[^{}]*)\}")
_AMOUNT = re.compile(r"(\d+)|(\d+(?:\.\d+)?)%")


@dataclass(frozen=True)
class Record:
    """One dataset record and where it comes from.

    ``index`` is the ordinal of the entry among its file's non-empty entries (bad ones
    included), so for a well-formed file it is the row index the upstream tools get from
    ``enumerate``: shard keys built from it keep their values.
    """

    data: dict
    file: str
    line: int
    index: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class BadRecord:
    """An entry that was skipped, and why (``str()`` gives ``file:line: reason``, or
    ``file:line (id <id>): reason`` for a record whose ``id`` is known). The one bad-record type of the
    project: the dataset reader, the Stage tools and the trainer's dataset all report with it."""

    file: str
    line: int
    reason: str
    id: object = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def __str__(self) -> str:
        named = "" if self.id is None else f" (id {_shortened(str(self.id))})"
        return f"{self.file}:{self.line}{named}: {self.reason}"


@dataclass(frozen=True)
class Source:
    """One dataset file and the part of it to read (``amount`` is a percentage if ``percent``)."""

    path: str
    strategy: str = "all"
    amount: int | Fraction | None = None
    percent: bool = False

    @property
    def needs_count(self) -> bool:
        """Whether the records of the file must be counted before any is picked."""
        return self.strategy in ("end", "random") or self.percent

    def quota(self, total: int | None) -> int | None:
        """How many records to take from a file of ``total`` good records (None: all)."""
        if self.strategy == "all":
            return None
        n = math.ceil(self.amount * total / 100) if self.percent else int(self.amount)
        return n if total is None else min(n, total)


def expand_braces(path: str) -> list[str]:
    """``a/{x,y}.json`` -> ``[a/x.json, a/y.json]``; groups without a comma stay literal."""
    m = _BRACES.search(path)
    if not m:
        return [path]
    head, tail = path[: m.start()], path[m.end() :]
    out: list[str] = []
    for item in m.group(1).split(","):
        out += expand_braces(head + item.strip() + tail)
    return out


def parse_strategy(text: str) -> tuple[str, int | Fraction | None, bool]:
    """``"first:10%"`` -> ``("first", Fraction(10), True)``; raises ValueError saying what is wrong."""
    name, sep, amount = str(text).strip().partition(":")
    name, amount = name.strip(), amount.strip()
    if name not in STRATEGIES:
        raise ValueError(
            f"unknown sampling_strategy {text!r} (expected all, first:N, end:N or random:N; "
            "N a count or a percentage such as 10%)"
        )
    if name == "all":
        if sep:
            raise ValueError(f"sampling_strategy {text!r}: 'all' takes no count")
        return "all", None, False
    if not sep or not amount:
        raise ValueError(f"sampling_strategy {text!r}: {name!r} needs a count, e.g. {name}:100 or {name}:10%")
    m = _AMOUNT.fullmatch(amount)
    if not m:
        raise ValueError(
            f"sampling_strategy {text!r}: bad N {amount!r} (a positive integer or a percentage such as 10%)"
        )
    if m.group(1) is not None:
        n = int(m.group(1))
        if n < 1:
            raise ValueError(
                f"sampling_strategy {text!r}: N must be at least 1 (to skip a dataset, remove its entry)"
            )
        return name, n, False
    p = Fraction(m.group(2))
    if not 0 < p <= 100:
        raise ValueError(f"sampling_strategy {text!r}: a percentage must be in (0, 100]")
    return name, p, True


def resolve_sources(path: str | os.PathLike) -> list[Source]:
    """The data files ``path`` names, in reading order, each with its sampling.

    Raises ValueError for a bad mixture or an unsupported suffix and FileNotFoundError
    for a missing file, naming the path (and the mixture entry); nothing is read yet
    beyond the mixture itself and the first bytes of each ``.json`` file.
    """
    sources: list[Source] = []
    for p in expand_braces(os.fspath(path)):
        suffix = Path(p).suffix.lower()
        if suffix in MIXTURE_SUFFIXES:
            sources += _mixture_sources(p)
        else:
            _check_data_file(p)
            sources.append(Source(p))
    return sources


def _mixture_sources(yaml_path: str) -> list[Source]:
    if not os.path.isfile(yaml_path):
        raise FileNotFoundError(f"dataset mixture not found: {yaml_path}")
    try:
        with open(yaml_path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ValueError(f"{yaml_path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    entries = doc.get("datasets") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{yaml_path}: expected a non-empty 'datasets' list at the top level")
    folder = os.path.dirname(yaml_path)
    sources: list[Source] = []
    for i, entry in enumerate(entries):
        where = f"{yaml_path}: datasets[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with json_path, got {type(entry).__name__}")
        rel = entry.get("json_path")
        if not isinstance(rel, str) or not rel.strip():
            raise ValueError(f"{where}: missing or empty json_path")
        strategy = entry.get("sampling_strategy")
        if strategy is None:
            strategy = "all"
        if not isinstance(strategy, str):
            raise ValueError(f"{where}: sampling_strategy must be a string, got {strategy!r}")
        try:
            name, amount, percent = parse_strategy(strategy)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        for named in expand_braces(os.path.expanduser(rel.strip())):
            if Path(named).suffix.lower() in MIXTURE_SUFFIXES:
                raise ValueError(
                    f"{where}: json_path {named} is a mixture; a mixture lists .json/.jsonl files"
                )
            try:
                p = _mixture_file(named, folder)
                _check_data_file(p)
            except (OSError, ValueError) as exc:
                raise type(exc)(f"{where}: {exc}") from None
            sources.append(Source(p, name, amount, percent))
    return sources


def _mixture_file(path: str, yaml_folder: str) -> str:
    """Where a mixture's ``json_path`` is: as written when absolute; a relative one in the YAML's folder,
    else in the working directory (upstream's rule). FileNotFoundError naming both when neither exists."""
    in_folder = os.path.normpath(os.path.join(yaml_folder, path))
    if os.path.isabs(path) or os.path.exists(in_folder):
        return in_folder
    in_cwd = os.path.abspath(path)
    if os.path.exists(in_cwd):
        return in_cwd
    if os.path.abspath(in_folder) == in_cwd:  # the YAML is in the working directory: one place to look
        raise FileNotFoundError(f"dataset file not found: {in_folder}")
    raise FileNotFoundError(
        f"dataset file not found: {path}, tried {in_folder} (relative to the YAML's folder) and {in_cwd} "
        "(relative to the working directory)"
    )


def _check_data_file(path: str) -> None:
    """Fail early, naming ``path``, if it is not a readable data file of a known format."""
    suffix = Path(path).suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported dataset file suffix {suffix!r} "
            "(expected .jsonl, .json (array), .yaml/.yml (mixture) or a {a,b} brace list)"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file not found: {path}")
    if suffix == ".json":
        with open(path, "rb") as f:
            head = f.read(1 << 16)
            while head and not head.lstrip(codecs.BOM_UTF8 + b" \t\r\n"):
                head = f.read(1 << 16)
        first = head.lstrip(codecs.BOM_UTF8 + b" \t\r\n")[:1]
        if first != b"[":
            found = f"it starts with {first.decode('latin-1')!r}" if first else "it is empty"
            raise ValueError(
                f"{path}: a .json dataset must be a JSON array, but {found} "
                "(one object per line needs the .jsonl suffix)"
            )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else f"{text[: limit // 2]}...{text[-limit // 2 :]}"


def _described(value: object) -> str:
    """A value's JSON type as an error names it (empty strings and arrays said so)."""
    if value == "" or value == []:
        return f"an empty {_json_type(value)}"
    return _json_type(value)


def _path_problem(field: str, value: object) -> str | None:
    if isinstance(value, str) and value:
        return None
    return f"'{field}' must be a path (a non-empty string), got {_described(value)}"


def _images_problem(images: object) -> str | None:
    if isinstance(images, list) and images:
        wrong = [p for p in images if not (isinstance(p, str) and p)]
        if not wrong:
            return None
        got = f"an array holding {_described(wrong[0])}"
    elif isinstance(images, str) and images:
        return None
    else:
        got = _described(images)
    return f"'image' must be a path or a non-empty array of paths, got {got}"


def _turn_problem(index: int, turn: object) -> str | None:
    if not isinstance(turn, dict):
        return f"'conversations' turn {index} must be an object, got {_json_type(turn)}"
    for keys in (("from", "role"), ("value", "content")):
        key = next((k for k in keys if k in turn), None)
        if key is None:
            return f"'conversations' turn {index} has no '{keys[0]}'"
        if not isinstance(turn[key], str):
            return f"'conversations' turn {index}: '{key}' must be a string, got {_json_type(turn[key])}"
    return None


def check_record(data: dict, required: tuple[str, ...] = ()) -> None:
    """Raise ValueError naming the problem if a record's LLaVA fields have the wrong type.

    The one check Stage 1, both Stage-2 modes and the trainer make, so a record is usable
    by all of them or bad for all of them: ``id`` a string or an integer; ``video`` and
    ``positions_thw`` a path (non-empty string); ``image`` a path or a non-empty array of
    paths, never beside a ``video``; ``conversations`` a non-empty array of turns, each an
    object with a string ``from`` (or ``role``) and ``value`` (or ``content``). A field that
    is absent or ``null`` is not checked, unless it is in ``required`` (then it is missing).
    What the values mean (the files, the speakers, the placeholders) is checked where they
    are used.
    """
    for name in required:
        if data.get(name) is None:
            raise ValueError(f"'{name}' is missing")
    sid = data.get("id")
    if sid is not None and (isinstance(sid, bool) or not isinstance(sid, (str, int))):
        raise ValueError(f"'id' must be a string or an integer, got {_json_type(sid)}")
    for name in ("video", "positions_thw"):
        problem = None if data.get(name) is None else _path_problem(name, data[name])
        if problem:
            raise ValueError(problem)
    images = data.get("image")
    if images is not None:
        if data.get("video") is not None:
            raise ValueError("a record has either 'image' or 'video', not both")
        problem = _images_problem(images)
        if problem:
            raise ValueError(problem)
    conversations = data.get("conversations")
    if conversations is not None:
        if not isinstance(conversations, list) or not conversations:
            got = _described(conversations)
            raise ValueError(f"'conversations' must be a non-empty array of turns, got {got}")
        for index, turn in enumerate(conversations):
            problem = _turn_problem(index, turn)
            if problem:
                raise ValueError(problem)


def _entry(value: object, path: str, line: int, index: int) -> Record | BadRecord:
    if isinstance(value, dict):
        return Record(value, path, line, index)
    return BadRecord(path, line, f"not a JSON object (got {_json_type(value)})")


def iter_entries(path: str) -> Iterator[Record | BadRecord]:
    """Every non-empty entry of one ``.jsonl`` or ``.json`` file, good or bad, in file order."""
    if Path(path).suffix.lower() == ".jsonl":
        return _jsonl_entries(path)
    return _array_entries(path)


def _jsonl_entries(path: str) -> Iterator[Record | BadRecord]:
    index = 0
    with open(path, "rb") as f:  # bytes: a bad UTF-8 line is one bad record, not a crash
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            raw = raw.strip()
            if not raw:
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield BadRecord(path, lineno, f"invalid UTF-8 (byte {exc.start + 1} of the line)")
            except json.JSONDecodeError as exc:
                yield BadRecord(path, lineno, f"invalid JSON ({exc.msg} at column {exc.colno})")
            else:
                yield _entry(value, path, lineno, index)
            index += 1


def _array_entries(path: str) -> Iterator[Record | BadRecord]:
    """Elements of a top-level JSON array, read ``_CHUNK`` characters at a time.

    ``buf[pos:]`` is the unread text; ``line`` is the line of ``buf[pos]`` and
    ``line_start`` the absolute offset where that line begins (for error columns). An
    element that does not fit doubles the next read, so a large element costs linear time.
    """
    dec = json.JSONDecoder()
    buf, pos, base, eof = "", 0, 0, False
    line, line_start, index = 1, 0, 0
    with open(path, encoding="utf-8-sig", newline="") as f:

        def fill(want: int = 0) -> None:
            nonlocal buf, pos, base, eof
            chunk = f.read(max(_CHUNK, want))
            eof = not chunk
            base += pos
            buf, pos = buf[pos:] + chunk, 0

        def advance(to: int) -> None:
            nonlocal pos, line, line_start
            n = buf.count("\n", pos, to)
            if n:
                line += n
                line_start = base + buf.rindex("\n", pos, to) + 1
            pos = to

        def more_text() -> bool:
            """Skip whitespace; False at the end of the file."""
            while True:
                advance(_WS.match(buf, pos).end())
                if pos < len(buf):
                    return True
                if eof:
                    return False
                fill()

        def broken(problem: str, at: int | None = None) -> BadRecord:
            at = pos if at is None else at
            ln = line + buf.count("\n", pos, at)
            nl = buf.rfind("\n", pos, at)
            col = at - nl if nl >= 0 else base + at - line_start + 1
            return BadRecord(
                path,
                ln,
                f"invalid JSON ({problem} at column {col}); the rest of this file cannot be read",
            )

        try:
            if not more_text() or buf[pos] != "[":
                yield broken("expected a JSON array")
                return
            advance(pos + 1)
            after_value = False
            while True:
                if not more_text():
                    yield broken("the file ends before the array's closing ']'")
                    return
                c = buf[pos]
                if after_value:
                    if c == "]":
                        break
                    if c != ",":
                        yield broken("Expecting ',' delimiter")
                        return
                    advance(pos + 1)
                    after_value = False
                    if not more_text():
                        yield broken("the file ends before the array's closing ']'")
                        return
                elif c == "]" and index == 0:
                    break
                while True:
                    try:
                        value, end = dec.raw_decode(buf, pos)
                        if eof or end <= len(buf) - _MARGIN:
                            break
                    except json.JSONDecodeError as exc:
                        unterminated = exc.msg.startswith("Unterminated string")
                        if eof:
                            truncated = unterminated or exc.pos >= len(buf)
                            problem = f"the file ends inside an element: {exc.msg}" if truncated else exc.msg
                            yield broken(problem, exc.pos)
                            return
                        if not unterminated and exc.pos <= len(buf) - _MARGIN:  # more text cannot fix it
                            yield broken(exc.msg, exc.pos)
                            return
                    fill(len(buf) - pos)  # the element may continue: read at least as much again
                start = line
                advance(end)
                yield _entry(value, path, start, index)
                index += 1
                after_value = True
            advance(pos + 1)
            if more_text():
                yield broken("unexpected text after the array's closing ']'")
        except UnicodeDecodeError as exc:
            yield BadRecord(path, line, f"invalid UTF-8 ({exc.reason}); the rest of this file cannot be read")


class DatasetReader:
    """Iterate the records of a dataset path (any format above), counting bad entries.

    Each iteration is one pass over the sources; the counters describe the latest pass:
    ``records`` (yielded), ``bad_records`` (skipped entries, each logged once) and
    ``bad_examples`` (the first ``max_examples`` of them, for a closing summary).
    """

    def __init__(self, path: str | os.PathLike, *, seed: int = 0, max_examples: int = 5) -> None:
        self.path = os.fspath(path)
        self.seed = int(seed)
        self.max_examples = int(max_examples)
        self.sources = resolve_sources(self.path)
        self.records = 0
        self.bad_records = 0
        self.bad_examples: list[BadRecord] = []

    def __iter__(self) -> Iterator[Record]:
        self.records, self.bad_records, self.bad_examples = 0, 0, []
        for position, source in enumerate(self.sources):
            yield from self._read(position, source)

    def _read(self, position: int, source: Source) -> Iterator[Record]:
        total = None
        if source.needs_count:  # a silent first pass: bad entries are reported by the second
            total = sum(isinstance(e, Record) for e in iter_entries(source.path))
        take = source.quota(total)
        if take == 0:
            return
        rng = random.Random(f"{self.seed}:{position}")  # str seeds hash the same in every process
        ordinal, left = 0, take
        for entry in iter_entries(source.path):
            if isinstance(entry, BadRecord):
                self._bad(entry)
                continue
            if source.strategy == "end":
                keep = ordinal >= total - take
            elif source.strategy == "random":  # selection sampling: exactly `take`, uniform
                keep = ordinal < total and rng.random() * (total - ordinal) < left
            else:
                keep = True
            ordinal += 1
            if keep:
                self.records += 1
                yield entry
                if take is not None:
                    left -= 1
                    if left == 0 and source.strategy == "first":  # the rest is never read
                        return

    def reject(self, record: Record, problem: str) -> None:
        """Count ``record`` as bad: the tool reading it found it unusable (``problem`` says why).

        Logged and listed in the summary like a malformed line, with the record's id, so a
        tool reports every bad record of its pass in one counter, ``bad_records``.
        """
        self._bad(BadRecord(record.file, record.line, problem, record.data.get("id")))

    def _bad(self, entry: BadRecord) -> None:
        log.warning("%s", entry)
        self.bad_records += 1
        if len(self.bad_examples) < self.max_examples:
            self.bad_examples.append(entry)

    def summary_lines(self) -> list[str]:
        """The bad entries of the latest pass, for a tool's closing summary (empty if none)."""
        if not self.bad_records:
            return []
        shown = len(self.bad_examples)
        head = f"{self.bad_records} bad dataset record(s) skipped"
        head += ":" if shown == self.bad_records else f", the first {shown}:"
        return [head] + [f"  {e}" for e in self.bad_examples]


__all__ = [
    "DATA_SUFFIXES",
    "MIXTURE_SUFFIXES",
    "STRATEGIES",
    "BadRecord",
    "DatasetReader",
    "Record",
    "Source",
    "check_record",
    "expand_braces",
    "iter_entries",
    "parse_strategy",
    "resolve_sources",
]
