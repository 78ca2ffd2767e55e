"""The dataset reader (``cv_reader.dataset``) and the Stage tools reading through it."""

from __future__ import annotations

import builtins
import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from cv_reader import dataset as ds
from cv_reader import stage1, stage2
from cv_reader.batch import STATUS_FIELDS
from cv_reader.dataset import BadRecord, DatasetReader, Record, expand_braces, parse_strategy
from test_stage_cli import S1, _conv

LOGGER = "cv_reader.dataset"


def _jsonl(path: Path, items: list) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return str(path)


def _ids(records) -> list:
    return [r.data["id"] for r in records]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_jsonl_malformed_and_non_object_lines_are_logged_skipped_counted(tmp_path, caplog):
    p = _jsonl(
        tmp_path / "d.jsonl",
        [{"id": 0}, "", "not json", "[1, 2]", '"str"', "null", "   ", {"id": 1}],
    )
    reader = DatasetReader(p, max_examples=3)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        recs = list(reader)
    assert [(r.data, r.file, r.line, r.index) for r in recs] == [({"id": 0}, p, 1, 0), ({"id": 1}, p, 8, 5)]
    assert recs[1].where == f"{p}:8"
    assert reader.records == 2 and reader.bad_records == 4
    warned = _warnings(caplog)
    assert warned == [
        f"{p}:3: invalid JSON (Expecting value at column 1)",
        f"{p}:4: not a JSON object (got array)",
        f"{p}:5: not a JSON object (got string)",
        f"{p}:6: not a JSON object (got null)",
    ]  # each bad line logged once, with its file:line
    assert [str(b) for b in reader.bad_examples] == warned[:3]  # the first max_examples
    assert reader.summary_lines()[0] == "4 bad dataset record(s) skipped, the first 3:"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert list(reader) == recs  # a second pass reads the same and resets the counters
    assert reader.bad_records == 4 and len(_warnings(caplog)) == 4


def test_jsonl_invalid_utf8_line_is_one_bad_record(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_bytes(b'{"id": 0}\n{"id": "\xff"}\n{"id": 2}\n')
    reader = DatasetReader(p)
    assert _ids(reader) == [0, 2]
    assert reader.bad_records == 1 and str(reader.bad_examples[0]).startswith(f"{p}:2: invalid UTF-8")


ARRAY_ITEMS = [
    {
        "id": 0,
        "f": 1.5e-3,
        "s": 'q"uote \\ é \U0001f600 \t',
        "n": None,
        "l": [1, 2, {"z": -12345678901234567890}],
    },
    {"id": 1, "t": True, "e": {}, "u": "\u2028 line separator"},
    {"id": 2, "long": "y" * 300},
    {"id": 3, "exp": 6.02e23, "neg": -0.0},
]


def _array_text(items: list) -> str:
    """Pretty-printed array: element i starts on line 2 + (lines of elements before it)."""
    parts = [json.dumps(x, indent=1, ensure_ascii=(i % 2 == 0)) for i, x in enumerate(items)]
    return "[\n" + ",\n".join(parts) + "\n]\n"


def test_json_array_tiny_chunks_give_identical_records_and_start_lines(tmp_path, monkeypatch):
    p = tmp_path / "a.json"
    text = _array_text(ARRAY_ITEMS)
    p.write_text(text, encoding="utf-8")
    starts, line = [], 2
    for i, x in enumerate(ARRAY_ITEMS):
        starts.append(line)
        line += json.dumps(x, indent=1, ensure_ascii=(i % 2 == 0)).count("\n") + 1
    ref = list(DatasetReader(p))
    assert [r.data for r in ref] == ARRAY_ITEMS
    assert [r.line for r in ref] == starts and [r.index for r in ref] == [0, 1, 2, 3]
    minified = tmp_path / "m.json"
    minified.write_text(json.dumps(ARRAY_ITEMS, ensure_ascii=False), encoding="utf-8")
    for chunk in list(range(1, 41)) + [97, 1000]:  # every cut point of numbers, escapes, literals
        monkeypatch.setattr(ds, "_CHUNK", chunk)
        reader = DatasetReader(p)
        assert list(reader) == ref and reader.bad_records == 0, chunk
        assert [r.data for r in DatasetReader(minified)] == ARRAY_ITEMS, chunk


def test_json_array_is_streamed_not_loaded_whole(tmp_path, monkeypatch):
    p = tmp_path / "big.json"
    p.write_text(json.dumps([{"id": i, "pad": "x" * 50} for i in range(2000)]))
    size = p.stat().st_size
    real_open = builtins.open

    class Spy:
        def __init__(self, *a, **k):
            self.f, self.total = real_open(*a, **k), 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            assert 0 < n <= 4096  # bounded reads, never the whole file
            data = self.f.read(n)
            self.total += len(data)
            return data

    spies: list[Spy] = []

    def spy_open(*a, **k):
        spies.append(Spy(*a, **k))
        return spies[-1]

    monkeypatch.setattr(ds, "_CHUNK", 1024)
    monkeypatch.setattr(ds, "open", spy_open, raising=False)  # shadows the builtin in the module
    it = ds.iter_entries(str(p))
    first = next(it)
    read_before_first = spies[0].total
    rest = list(it)
    assert first.data["id"] == 0 and len(rest) == 1999
    assert read_before_first <= 4096 < size and spies[0].total == size


def test_json_array_truncated_or_broken_gives_up_the_file_and_reads_the_next(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(ds, "_CHUNK", 5)
    (tmp_path / "a.json").write_text('[\n {"id": 0},\n 7,\n {"id": 1},\n {"id": 2, "x": [1, 2')
    (tmp_path / "b.json").write_text('[{"id": 3},\n {"id": 4} {"id": 5},\n' + ' {"id": 9},\n' * 500 + "]")
    (tmp_path / "c.json").write_text('[{"id": 6}]')
    reader = DatasetReader(str(tmp_path / "{a,b,c}.json"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        recs = list(reader)
    assert _ids(recs) == [0, 1, 3, 4, 6]
    assert [(Path(r.file).name, r.line, r.index) for r in recs] == [
        ("a.json", 2, 0),
        ("a.json", 4, 2),
        ("b.json", 1, 0),
        ("b.json", 2, 1),
        ("c.json", 1, 0),
    ]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    warned = _warnings(caplog)
    assert warned[0] == f"{a}:3: not a JSON object (got number)"
    assert warned[1].startswith(f"{a}:5: invalid JSON (the file ends inside an element")
    assert warned[2] == (
        f"{b}:2: invalid JSON (Expecting ',' delimiter at column 12); the rest of this file cannot be read"
    )
    assert all(w.endswith("the rest of this file cannot be read") for w in warned[1:])
    assert reader.bad_records == 3 and len(warned) == 3


def test_json_array_edge_shapes(tmp_path):
    p = tmp_path / "e.json"
    p.write_text(" \n[ ]\n")
    assert list(DatasetReader(p)) == []
    p.write_text('[{"id": 0},]')
    r = DatasetReader(p)
    assert _ids(r) == [0] and "Expecting value" in str(r.bad_examples[0])
    p.write_text('[{"id": 0}] trailing')
    r = DatasetReader(p)
    assert _ids(r) == [0] and "after the array's closing ']'" in str(r.bad_examples[0])


def test_brace_lists(tmp_path):
    assert expand_braces("/d/{a,b}.json") == ["/d/a.json", "/d/b.json"]
    assert expand_braces("/d/{x, y}/{1,2}.jsonl") == [
        "/d/x/1.jsonl",
        "/d/x/2.jsonl",
        "/d/y/1.jsonl",
        "/d/y/2.jsonl",
    ]
    assert expand_braces("/d/{one}.json") == ["/d/{one}.json"]  # no comma: a literal name
    _jsonl(tmp_path / "b.jsonl", [{"id": "b0"}, {"id": "b1"}])
    _jsonl(tmp_path / "a.jsonl", [{"id": "a0"}])
    (tmp_path / "c.json").write_text(json.dumps([{"id": "c0"}]))
    assert _ids(DatasetReader(str(tmp_path / "{b,a}.jsonl"))) == ["b0", "b1", "a0"]
    recs = list(DatasetReader(str(tmp_path / "{a.jsonl,c.json}")))
    assert _ids(recs) == ["a0", "c0"] and [r.index for r in recs] == [0, 0]
    with pytest.raises(FileNotFoundError, match="zz.jsonl"):
        DatasetReader(str(tmp_path / "{a,zz}.jsonl"))


def _mixture(tmp_path: Path, entries: list, name: str = "mix.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"datasets": entries}))
    return str(path)


@pytest.fixture
def seven(tmp_path) -> str:
    """Seven records with a bad line between records 2 and 3 (not counted as a record)."""
    items = [{"id": i} for i in range(7)]
    items.insert(3, "{broken")
    return _jsonl(tmp_path / "data" / "seven.jsonl", items)


@pytest.mark.parametrize(
    "strategy, ids",
    [
        (None, list(range(7))),
        ("all", list(range(7))),
        ("first:3", [0, 1, 2]),
        ("first:100", list(range(7))),  # more than the file holds: all of it
        ("first:10%", [0]),  # ceil(10 * 7 / 100) = 1
        ("first:50%", [0, 1, 2, 3]),  # ceil(3.5) = 4, the bad line not counted
        ("end:2", [5, 6]),
        ("end:30%", [4, 5, 6]),  # ceil(2.1) = 3
        ("end:100%", list(range(7))),
    ],
)
def test_sampling_strategies(tmp_path, seven, strategy, ids):
    entry = {"json_path": "data/seven.jsonl"}
    if strategy is not None:
        entry["sampling_strategy"] = strategy
    reader = DatasetReader(_mixture(tmp_path, [entry]))
    recs = list(reader)
    assert _ids(recs) == ids
    assert all(r.file == seven for r in recs)
    assert [r.index for r in recs] == [i + (i >= 3) for i in ids]  # the bad line keeps its index


def test_first_stops_reading_after_its_records(tmp_path, seven):
    reader = DatasetReader(_mixture(tmp_path, [{"json_path": seven, "sampling_strategy": "first:2"}]))
    assert _ids(reader) == [0, 1] and reader.bad_records == 0  # the bad line after them is never read
    reader = DatasetReader(_mixture(tmp_path, [{"json_path": seven, "sampling_strategy": "end:2"}]))
    assert _ids(reader) == [5, 6] and reader.bad_records == 1  # read over: reported once


def test_random_sampling_is_seeded_counted_and_in_file_order(tmp_path):
    big = _jsonl(tmp_path / "big.jsonl", [{"id": i} for i in range(200)])
    mix = _mixture(tmp_path, [{"json_path": big, "sampling_strategy": "random:20"}])
    picks = {seed: _ids(DatasetReader(mix, seed=seed)) for seed in (0, 1)}
    again = _ids(DatasetReader(mix, seed=0))
    assert again == picks[0]  # same seed, same records
    assert picks[0] != picks[1]  # another seed, other records
    for got in picks.values():
        assert len(got) == 20 == len(set(got)) and got == sorted(got)  # count right, file order kept
    assert picks[0] != list(range(20)) and picks[0] != list(range(180, 200))
    pct = _mixture(tmp_path, [{"json_path": big, "sampling_strategy": "random:12.5%"}], "pct.yaml")
    assert len(_ids(DatasetReader(pct))) == 25
    twice = _mixture(tmp_path, [{"json_path": big, "sampling_strategy": "random:20"}] * 2, "twice.yaml")
    both = _ids(DatasetReader(twice))
    assert len(both) == 40 and both[:20] == picks[0] and both[20:] != both[:20]  # one stream per source


def test_yaml_relative_paths_resolve_against_the_yaml_folder(tmp_path, monkeypatch):
    sub = tmp_path / "cfg"
    _jsonl(sub / "data" / "x.jsonl", [{"id": "x"}])
    _jsonl(tmp_path / "abs.jsonl", [{"id": "abs"}])
    (sub / "data" / "y.json").write_text(json.dumps([{"id": "y"}]))
    mix = _mixture(
        sub,
        [
            {"json_path": "data/x.jsonl"},
            {"json_path": str(tmp_path / "abs.jsonl")},
            {"json_path": "data/y.json"},
        ],
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recs = list(DatasetReader(mix))
    assert _ids(recs) == ["x", "abs", "y"]
    assert recs[0].file == str(sub / "data" / "x.jsonl")
    two = _mixture(sub, [{"json_path": "data/{x.jsonl,y.json}", "sampling_strategy": "first:1"}], "two.yml")
    assert _ids(DatasetReader(two)) == ["x", "y"]  # each file of a brace list sampled on its own


def test_yaml_relative_paths_fall_back_to_the_working_directory(tmp_path, monkeypatch):
    """Upstream reads json_path relative to where training runs: tried after the YAML's folder."""
    sub = tmp_path / "cfg"
    _jsonl(tmp_path / "data" / "w.jsonl", [{"id": "cwd"}])
    _jsonl(tmp_path / "data" / "both.jsonl", [{"id": "cwd-both"}])
    _jsonl(sub / "data" / "both.jsonl", [{"id": "yaml-both"}])
    mix = _mixture(sub, [{"json_path": "data/w.jsonl"}, {"json_path": "data/both.jsonl"},
                         {"json_path": "data/{w,both}.jsonl"}])
    monkeypatch.chdir(tmp_path)
    recs = list(DatasetReader(mix))
    assert _ids(recs) == ["cwd", "yaml-both", "cwd", "yaml-both"]  # the YAML's folder first
    assert recs[0].file == str(tmp_path / "data" / "w.jsonl")
    gone = _mixture(sub, [{"json_path": "data/w.jsonl"}, {"json_path": "data/gone.jsonl"}], "gone.yaml")
    with pytest.raises(FileNotFoundError) as exc:
        DatasetReader(gone)
    assert str(exc.value) == (
        f"{gone}: datasets[1]: dataset file not found: data/gone.jsonl, tried {sub / 'data' / 'gone.jsonl'} "
        f"(relative to the YAML's folder) and {tmp_path / 'data' / 'gone.jsonl'} (relative to the working "
        "directory)"
    )


X = "{json_path: data/x.jsonl}"  # a good first entry, so that the bad one is datasets[1]


@pytest.mark.parametrize(
    "doc, entry, problem",
    [
        ("other: 1\n", None, "expected a non-empty 'datasets' list"),
        ("datasets: data/x.jsonl\n", None, "expected a non-empty 'datasets' list"),
        ("datasets: []\n", None, "expected a non-empty 'datasets' list"),
        ("- json_path: data/x.jsonl\n", None, "expected a non-empty 'datasets' list"),
        ("datasets: [\n  {json_path: data/x.jsonl\n", None, "invalid YAML"),
        (f"datasets: [{X}, just_a_string]", 1, "expected a mapping with json_path, got str"),
        (f"datasets: [{X}, {{sampling_strategy: all}}]", 1, "missing or empty json_path"),
        (f"datasets: [{X}, {{json_path: ''}}]", 1, "missing or empty json_path"),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: middle:3}}]",
            1,
            "unknown sampling_strategy 'middle:3'",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: first}}]",
            1,
            "sampling_strategy 'first': 'first' needs a count",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: 'first:abc'}}]",
            1,
            "sampling_strategy 'first:abc': bad N 'abc'",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: 'end:-3'}}]",
            1,
            "sampling_strategy 'end:-3': bad N '-3'",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: 'end:0'}}]",
            1,
            "sampling_strategy 'end:0': N must be at least 1",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: 'random:150%'}}]",
            1,
            "sampling_strategy 'random:150%': a percentage must be in (0, 100]",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: 'all:5'}}]",
            1,
            "sampling_strategy 'all:5': 'all' takes no count",
        ),
        (
            f"datasets: [{X}, {{json_path: data/x.jsonl, sampling_strategy: 5}}]",
            1,
            "sampling_strategy must be a string, got 5",
        ),
        (f"datasets: [{X}, {{json_path: other.yaml}}]", 1, "is a mixture"),
        (f"datasets: [{X}, {{json_path: data/x.csv}}]", 1, "unsupported dataset file suffix '.csv'"),
    ],
)
def test_yaml_errors_name_the_file_the_entry_and_the_problem(tmp_path, doc, entry, problem):
    _jsonl(tmp_path / "data" / "x.jsonl", [{"id": "x"}])
    (tmp_path / "data" / "x.csv").write_text("id\n")
    mix = tmp_path / "bad.yaml"
    mix.write_text(doc)
    with pytest.raises(ValueError) as exc:
        DatasetReader(mix)
    msg = str(exc.value)
    assert msg.startswith(f"{mix}: "), msg
    if entry is not None:
        assert msg.startswith(f"{mix}: datasets[{entry}]: "), msg
    assert problem in msg, msg


def test_parse_strategy_values():
    assert parse_strategy("all") == ("all", None, False)
    assert parse_strategy(" first : 10 ") == ("first", 10, False)
    name, amount, percent = parse_strategy("random:2.5%")
    assert (name, amount * 2, percent) == ("random", 5, True)


def test_configuration_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=f"dataset file not found: {missing}"):
        DatasetReader(missing)
    csv = tmp_path / "d.csv"
    csv.write_text("id,video\n")
    with pytest.raises(ValueError, match=r"d\.csv: unsupported dataset file suffix '\.csv'"):
        DatasetReader(csv)
    with pytest.raises(FileNotFoundError, match="mixture not found"):
        DatasetReader(tmp_path / "nope.yaml")
    mix = _mixture(tmp_path, [{"json_path": "gone.json"}])
    with pytest.raises(FileNotFoundError) as exc:
        DatasetReader(mix)
    assert str(exc.value).startswith(f"{mix}: datasets[0]: dataset file not found: gone.json, tried "
                                     f"{tmp_path / 'gone.json'} (relative to the YAML's folder) and ")
    lines = tmp_path / "lines.json"
    lines.write_text('{"id": 0}\n{"id": 1}\n')
    with pytest.raises(ValueError, match=r"lines\.json: a \.json dataset must be a JSON array.*\.jsonl"):
        DatasetReader(lines)
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="it is empty"):
        DatasetReader(empty)


def test_record_and_bad_record_types():
    r = Record({"id": 1}, "f.jsonl", 3, 2)
    assert r.where == "f.jsonl:3"
    with pytest.raises(AttributeError):
        r.line = 4  # frozen: provenance cannot drift from the data
    assert str(BadRecord("f.jsonl", 5, "invalid JSON (x)")) == "f.jsonl:5: invalid JSON (x)"


# --- the Stage tools read through the reader -------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, h264_static):
    """A bad video, a good video and a line that is not JSON (line 3)."""
    root = tmp_path_factory.mktemp("mixed")
    bad_video = root / "bad.mp4"
    bad_video.write_text("this is not a video\n" * 20)
    path = _jsonl(
        root / "mixed.jsonl",
        [
            {"id": "bad", "video": str(bad_video), "conversations": _conv(0)},
            {"id": "good", "video": h264_static.path, "conversations": _conv(1)},
            "not json",
        ],
    )
    return dict(root=root, jsonl=path, bad_video=str(bad_video))


def _done_line(out: str, tool: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"[{tool}] DONE"))


def _done_counts(out: str, tool: str, stats: dict) -> dict:
    """The counters of a tool's DONE line, checked against the shape both tools share and the run's own stats."""
    line = _done_line(out, tool)
    m = re.fullmatch(rf"\[{tool}\] DONE shard00of01 ((?:[a-z_]+=\d+ )+)elapsed=[\d.]+s avg=[\d.]+s/video", line)
    assert m, line
    counts = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    assert list(counts) == [name for name in STATUS_FIELDS if name in counts]  # one order for both tools
    assert counts == {k: v for k, v in stats.items() if k != "stale_tmp_removed"}
    return counts


def test_stage1_and_stage2_skip_a_bad_line_and_process_the_rest(mixed, tmp_path, capsys, caplog):
    s1 = tmp_path / "s1"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st1 = stage1.run(
            stage1.build_parser().parse_args(["--dataset_path", mixed["jsonl"], "--out_root", str(s1)] + S1)
        )
    assert (st1["ok"], st1["fail"], st1["bad_records"], st1["seen"]) == (1, 1, 1, 2)
    assert _warnings(caplog) == [f"{mixed['jsonl']}:3: invalid JSON (Expecting value at column 1)"]
    metas = list(s1.glob("*.meta.json"))
    assert len(metas) == 1 and metas[0].name.startswith("sample_good__")
    fail = (s1 / "stage1_failed.shard00of01.txt").read_text().splitlines()
    assert [line.split("\t")[:2] for line in fail] == [["bad", mixed["bad_video"]]]
    out = capsys.readouterr().out
    assert _done_counts(out, "stage1", st1)["bad_records"] == 1
    assert f"[stage1]   {mixed['jsonl']}:3: invalid JSON" in out

    caplog.clear()
    out_jsonl = tmp_path / "train.jsonl"
    args = [
        "--input_dataset",
        mixed["jsonl"],
        "--out_jsonl",
        str(out_jsonl),
        "--visidx_root",
        str(s1),
        "--out_image_root",
        str(tmp_path / "img"),
        "--num_images",
        "2",
        "--square_size",
        "192",
        "--T",
        "8",
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        st2 = stage2.run(stage2.build_parser().parse_args(args))
    assert (st2["ok"], st2["fail"], st2["bad_records"]) == (1, 1, 1)
    assert _warnings(caplog) == [f"{mixed['jsonl']}:3: invalid JSON (Expecting value at column 1)"]
    assert [json.loads(x)["id"] for x in out_jsonl.read_text().splitlines()] == ["good"]
    fail2 = Path(f"{out_jsonl}.fail.txt").read_text()
    assert fail2.startswith(f"bad\t{mixed['bad_video']}\t")
    out = capsys.readouterr().out
    assert _done_counts(out, "stage2", st2)["bad_records"] == 1


def test_stage1_mixture_keeps_the_output_names_of_the_plain_file(mixed, tmp_path):
    direct, mixture = tmp_path / "direct", tmp_path / "mixture"
    stage1.main(["--dataset_path", mixed["jsonl"], "--out_root", str(direct)] + S1)
    mix = _mixture(tmp_path, [{"json_path": mixed["jsonl"]}])
    stage1.main(["--dataset_path", mix, "--out_root", str(mixture)] + S1)
    names = sorted(p.name for p in direct.glob("sample_*"))
    assert names and names == sorted(p.name for p in mixture.glob("sample_*"))  # same shard keys


def test_stage_tools_stop_on_a_configuration_error(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(SystemExit, match=f"stage1.*{missing}"):
        stage1.main(["--dataset_path", str(missing), "--out_root", str(tmp_path / "o")] + S1)
    assert not (tmp_path / "o").exists()  # nothing started
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [{sampling_strategy: all}]\n")
    with pytest.raises(SystemExit, match=r"stage2.*bad\.yaml: datasets\[0\]: missing or empty json_path"):
        stage2.main(
            [
                "--input_dataset",
                str(bad),
                "--out_jsonl",
                str(tmp_path / "t.jsonl"),
                "--visidx_root",
                str(tmp_path),
            ]
            + ["--out_image_root", str(tmp_path / "img")]
        )
