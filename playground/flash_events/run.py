"""The flash-events benchmark: codec patches vs uniform frames at the same visual-token budget.

    python playground/flash_events/run.py [--quick] --out DIR [--budgets 2 4 8] [--modes codec uniform]

For every budget ``B`` (frame-equivalents: ``B`` x 16 patches of a 64 px frame) the tiny model is
trained twice from the same random start, on the same videos and questions, and scored with
lmms-eval on the held-out split (the ``flash_events`` group: colour and where, chance 0.25):

* ``codec``: Stage 1 (``Compressed_Video_Reader/tool/stage1.py --preset llava``, T = 64 of the 128
  frames, ``B`` mosaics) and Stage 2 (mosaics + ``positions_thw.npy``) make the training inputs;
  the test videos are precomputed the way benchmarks are
  (``scripts/precompute_codec_patch/preprocess_video_benchmark.sh flash_events``) and read by the
  eval from those packs: mosaic 0 is the whole first frame, the others hold the ``(B - 1) x 16``
  patches with the most motion / residual energy;
* ``uniform``: the trainer and the eval read ``B`` uniformly spaced frames of each video
  (``--video_mode frames --frames_upbound B --force_sample True``; eval ``max_frames=B``).

Both read ``B x 16`` patches per video (checked before training). Every step goes through the
project's own entry points (``llava.model.tiny``, the stage tools, ``llava.train.train``,
``scripts/eval/eval_ov_encoder.sh``), so the run is also a regression test of the whole pipeline.

Written into ``DIR``: ``results.json`` (a list of ``{mode, budget, accuracy, colour, where,
flash_reached, patches, train_seconds}``), ``results.md`` (the table printed at the end),
``accuracy_vs_budget.png``, and the intermediate steps (``data/``, ``base/``, ``codec/B*/``,
``ckpt/<mode>_b<B>/``, ``eval/<mode>_b<B>/``, ``logs/``). A step whose output is complete is not
run again, so an interrupted run resumes where it stopped; ``DIR/run_config.json`` records the
settings, and a rerun with other settings into the same ``DIR`` is refused. ``flash_reached`` is
the share of test videos in which what the model reads contains the flash: a uniform frame inside
the event, or a codec patch of an event frame overlapping the square (read back from the packs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "Compressed_Video_Reader")]  # this checkout's code

# The lmms-eval tasks' utils (the test docs and their cached videos; a folder of the package without
# an __init__.py, imported as a namespace package) and the videos' generator.
from llava.eval.tasks.flash_events import utils  # noqa: E402
from llava.synthetic import flash_events as flash  # noqa: E402

TASKS = ("flash_events_colour", "flash_events_where")
GROUP = "flash_events"
MODES = ("codec", "uniform")
CODEC_FRAMES = 64  # T: codec frames sampled of the 128
PATCH = 16


@dataclass(frozen=True)
class Size:
    """How big a run is: training videos (two questions each), epochs, eval docs per task, and the
    two training settings the tiny model is sensitive to here."""

    train: int
    epochs: int
    limit: int | None  # lmms-eval --limit (None: the whole test split, 64 videos per task)
    learning_rate: float = 2e-3
    batch_size: int = 8


SIZES = {
    # Batches of 32: with 8, the tiny model stays at chance on these noisy labels (most videos do
    # not show the flash to the reader); docs/flash_events.md, "The tiny model needs clean examples".
    "default": Size(train=400, epochs=24, limit=None, learning_rate=2e-3, batch_size=32),
    "quick": Size(train=32, epochs=1, limit=8, learning_rate=2e-3, batch_size=8),
}


# ---------------------------------------------------------------------------- steps
class Runner:
    """Runs the steps into ``out``, each once: its output's presence marks it done."""

    def __init__(self, out: Path, python: str, workers: int) -> None:
        self.out = out
        self.python = python
        self.workers = workers
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}

    def command(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``argv`` with its output in ``logs/<name>.log``; on failure show the log's end and stop."""
        log = self.logs / f"{name}.log"
        print(f"[flash] {name}: {' '.join(argv[:4])} ... (log: {log})", flush=True)
        start = time.perf_counter()
        # This checkout's code, whatever the environment has installed.
        path = os.pathsep.join(
            [str(REPO), str(REPO / "Compressed_Video_Reader"), os.environ.get("PYTHONPATH", "")]
        )
        with open(log, "w", encoding="utf-8") as f:
            rc = subprocess.run(
                argv,
                cwd=REPO,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": path.rstrip(os.pathsep), **(env or {})},
            ).returncode
        self.times[name] = time.perf_counter() - start
        if rc != 0:
            tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise SystemExit(f"[flash] {name} failed (exit status {rc}); the end of {log}:\n{tail}")

    def dataset(self, size: Size) -> Path:
        data = self.out / "data"
        if not (data / "dataset.json").is_file():
            self.command(
                "dataset",
                [
                    self.python,
                    str(REPO / "playground/flash_events/make_dataset.py"),
                    "--out",
                    str(data),
                    "--train",
                    str(size.train),
                    "--overwrite",
                ],
            )
        return data

    def base(self, seed: int) -> Path:
        base = self.out / "base"
        if not (base / "encoder" / "config.json").is_file() or not (base / "llm" / "config.json").is_file():
            shutil.rmtree(base, ignore_errors=True)
            self.command(
                "base",
                [self.python, "-m", "llava.model.tiny", "--parts", "--out", str(base), "--seed", str(seed)],
            )
        return base

    def codec_train(self, data: Path, budget: int) -> Path:
        """Stage 1 + Stage 2 over the training questions: ``codec/B<budget>/train.jsonl``."""
        root = self.out / "codec" / f"B{budget}"
        out_jsonl = root / "train.jsonl"
        if out_jsonl.is_file():
            return out_jsonl
        common = [
            "--video_folder",
            str(data),
            "--preset",
            "llava",
            "--num_workers",
            str(self.workers),
            "--square_size",
            str(flash.DEFAULT_SIZE),
        ]
        self.command(
            f"stage1_b{budget}",
            [
                self.python,
                str(REPO / "Compressed_Video_Reader/tool/stage1.py"),
                "--dataset_path",
                str(data / "train.jsonl"),
                "--out_root",
                str(root / "stage1"),
                *common,
                "--sequence_length",
                str(CODEC_FRAMES),
                "--keep_frames_equiv",
                str(budget),
            ],
        )
        self.command(
            f"stage2_b{budget}",
            [
                self.python,
                str(REPO / "Compressed_Video_Reader/tool/stage2.py"),
                "--mode",
                "pack",
                "--input_dataset",
                str(data / "train.jsonl"),
                "--visidx_root",
                str(root / "stage1"),
                "--out_image_root",
                str(root / "packs"),
                "--out_jsonl",
                str(out_jsonl),
                *common,
                "--T",
                str(CODEC_FRAMES),
                "--num_images",
                str(budget),
            ],
        )
        _check_all_packed(data / "train.jsonl", out_jsonl)
        return out_jsonl

    def codec_test(self, budget: int, media: Path) -> Path:
        """The test videos' packs, made by the benchmark precompute script: ``codec/B<budget>/assets``."""
        root = self.out / "codec" / f"B{budget}" / "assets"
        if not (root / GROUP / "packed.jsonl").is_file():
            self.command(
                f"precompute_b{budget}",
                ["bash", str(REPO / "scripts/precompute_codec_patch/preprocess_video_benchmark.sh"), GROUP],
                env={
                    "OUT_ROOT": str(root),
                    "CODEC_FRAMES": str(CODEC_FRAMES),
                    "CODEC_IMAGES": str(budget),
                    "CODEC_CANVAS": str(flash.DEFAULT_SIZE),
                    "NUM_WORKERS": str(self.workers),
                    "FLASH_EVENTS_MEDIA": str(media),
                    "PYTHON": self.python,
                },
            )
        return root

    def train(
        self, mode: str, budget: int, data: Path, base: Path, train_jsonl: Path, size: Size, seed: int
    ) -> tuple[Path, float]:
        ckpt = self.out / "ckpt" / f"{mode}_b{budget}"
        done = ckpt / "flash_train.json"
        if done.is_file():
            return ckpt, json.loads(done.read_text())["seconds"]
        shutil.rmtree(ckpt, ignore_errors=True)
        video = (
            ["--video_mode", "codec"]
            if mode == "codec"
            else ["--video_mode", "frames", "--frames_upbound", str(budget), "--force_sample", "True"]
        )
        name = f"train_{mode}_b{budget}"
        self.command(
            name,
            [
                self.python,
                "-m",
                "llava.train.train",
                "--model_name_or_path",
                str(base / "llm"),
                "--vision_tower",
                str(base / "encoder"),
                "--version",
                "qwen_1_5",
                "--data_path",
                str(train_jsonl),
                "--video_folder",
                str(data),
                *video,
                "--codec_frames",
                str(CODEC_FRAMES),
                "--codec_canvas",
                str(flash.DEFAULT_SIZE),
                "--codec_images",
                str(budget),
                "--mm_tunable_parts",
                "mm_vision_tower,mm_mlp_adapter,mm_language_model",
                "--mm_projector_type",
                "mlp2x_gelu",
                "--mm_vision_select_layer",
                "-2",
                "--output_dir",
                str(ckpt),
                "--num_train_epochs",
                str(size.epochs),
                "--per_device_train_batch_size",
                str(size.batch_size),
                "--learning_rate",
                str(size.learning_rate),
                "--lr_scheduler_type",
                "cosine",
                "--warmup_ratio",
                "0.05",
                "--weight_decay",
                "0.0",
                "--model_max_length",
                "2048",
                "--logging_steps",
                "10",
                "--save_strategy",
                "no",
                "--dataloader_num_workers",
                str(self.workers),
                "--dataloader_pin_memory",
                "False",
                "--report_to",
                "none",
                "--seed",
                str(seed),
            ],
        )
        seconds = self.times[name]
        _write_json(done, {"seconds": seconds})
        return ckpt, seconds

    def evaluate(
        self, mode: str, budget: int, ckpt: Path, assets: Path | None, media: Path, size: Size
    ) -> dict:
        """lmms-eval on the flash_events group: ``{task: acc}``, kept in ``eval/<mode>_b<B>/scores.json``."""
        folder = self.out / "eval" / f"{mode}_b{budget}"
        scores_path = folder / "scores.json"
        if scores_path.is_file():
            return json.loads(scores_path.read_text())
        shutil.rmtree(folder, ignore_errors=True)
        codec = f"codec_frames={CODEC_FRAMES},codec_images={budget},codec_canvas={flash.DEFAULT_SIZE}"
        env = {
            "MODEL_PATH": str(ckpt),
            "TASKS": GROUP,
            "OUTPUT_PATH": str(folder),
            "BATCH_SIZE": "8",
            "MODEL_ARGS": codec,
            "FLASH_EVENTS_MEDIA": str(media),
            "PYTHON": self.python,
            "VIDEO_MODE": "codec" if mode == "codec" else "frames",
            "CODEC_OFFLINE_ROOT": str(assets or ""),
        }
        if mode == "uniform":
            env["MAX_FRAMES"] = str(budget)
        if size.limit:
            env["LIMIT"] = str(size.limit)
        self.command(
            f"eval_{mode}_b{budget}", ["bash", str(REPO / "scripts/eval/eval_ov_encoder.sh")], env=env
        )
        results = json.loads(max(folder.rglob("*_results.json"), key=lambda p: p.stat().st_mtime).read_text())
        scores = {task: float(results["results"][task]["acc,none"]) for task in TASKS}
        if mode == "codec":
            log = (self.logs / f"eval_{mode}_b{budget}.log").read_text(encoding="utf-8", errors="replace")
            online = re.findall(
                r"videos: \d+ from precomputed codec assets, (\d+) codec computed online", log
            )
            if not online or any(int(n) for n in online):
                raise SystemExit(
                    f"[flash] eval_{mode}_b{budget}: some test videos were not read from the "
                    f"precomputed packs in {assets} (see its log)"
                )
        _write_json(scores_path, scores)
        return scores


# ---------------------------------------------------------------------------- measurements
def test_docs(limit: int | None) -> list[dict]:
    """The eval's docs (one per video, from the tasks' data.jsonl), the first ``limit`` of each task."""
    docs = [doc for doc in utils.make_docs() if doc["task"] == "colour"]
    return docs[:limit] if limit else docs


def flash_reached(mode: str, budget: int, docs: list[dict], assets: Path | None) -> float:
    """Share of ``docs``' videos in which the model's input shows the flash (see the module docstring).

    Codec packs are found by the videos' paths in ``$FLASH_EVENTS_MEDIA``, as the eval finds them."""
    from cv_reader import sample_frame_ids_uniform

    from llava.eval.codec_assets import CodecAssets
    from llava.processing.video import sample_frame_indices

    found = CodecAssets(str(assets)) if mode == "codec" else None
    hits = 0
    for doc in docs:
        event = range(doc["start"], doc["start"] + doc["length"])
        if mode == "uniform":
            frames = sample_frame_indices(doc["frames"], flash.FPS, budget, None, True)
            hits += any(int(f) in event for f in frames)
            continue
        asset = found.find(utils.render_video(doc), TASKS[0])
        if asset is None:
            raise SystemExit(f"[flash] no codec pack for test video {doc['index']} under {assets}")
        thw = np.load(asset.positions, allow_pickle=False)
        frame_ids = np.asarray(sample_frame_ids_uniform(doc["frames"], CODEC_FRAMES))[thw[:, 0]]
        y0, x0 = thw[:, 1] * PATCH, thw[:, 2] * PATCH
        overlap = (
            (y0 < doc["y"] + doc["side"])
            & (doc["y"] < y0 + PATCH)
            & (x0 < doc["x"] + doc["side"])
            & (doc["x"] < x0 + PATCH)
        )
        hits += bool((np.isin(frame_ids, list(event)) & overlap).any())
    return hits / len(docs)


def input_patches(mode: str, budget: int, base: Path, video: Path) -> int:
    """Patches the vision tower reads for one video in ``mode`` (the same for every video here)."""
    from transformers import AutoImageProcessor

    from llava.processing.media import VideoOptions, VisualProcessor, codec_options

    processor = AutoImageProcessor.from_pretrained(base / "encoder")
    options = VideoOptions(
        "codec" if mode == "codec" else "frames",
        budget,
        force_sample=True,
        codec=codec_options(CODEC_FRAMES, budget, flash.DEFAULT_SIZE, PATCH),
    )
    pixels = VisualProcessor(processor, None, video=options)([str(video)]).images[0]
    frames, height, width = pixels.shape[1:]
    return frames * (height // PATCH) * (width // PATCH)


# ---------------------------------------------------------------------------- reporting
def results_table(rows: list[dict]) -> str:
    """A Markdown table: one line per budget, codec and uniform side by side."""
    budgets = sorted({r["budget"] for r in rows})
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    head = ["budget (frames)", "patches"]
    for mode in modes:
        head += [f"{mode} acc", f"{mode} colour", f"{mode} where", f"{mode} reached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for budget in budgets:
        cells = [str(budget), str(budget * (flash.DEFAULT_SIZE // PATCH) ** 2)]
        for mode in modes:
            r = next(r for r in rows if r["mode"] == mode and r["budget"] == budget)
            cells += [
                f"{r['accuracy']:.3f}",
                f"{r['colour']:.3f}",
                f"{r['where']:.3f}",
                f"{r['flash_reached']:.0%}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy vs budget for both modes (solid; dotted: the colour question alone), the share of
    videos whose input shows the flash (dashed: the colour question's ceiling is about
    reached + (1 - reached) / 4), and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    colours = {"codec": "tab:blue", "uniform": "tab:orange"}
    for mode in MODES:
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["budget"])
        if not mine:
            continue
        budgets = [r["budget"] for r in mine]
        ax.plot(budgets, [r["accuracy"] for r in mine], "o-", color=colours[mode], label=f"{mode}: accuracy")
        ax.plot(budgets, [r["colour"] for r in mine], "^:", color=colours[mode], label=f"{mode}: colour only")
        ax.plot(
            budgets,
            [r["flash_reached"] for r in mine],
            "s--",
            color=colours[mode],
            alpha=0.6,
            label=f"{mode}: flash in the input",
        )
    ax.axhline(0.25, color="grey", lw=1, ls="-.", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["budget"] for r in rows}), [str(b) for b in sorted({r["budget"] for r in rows})])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("visual-token budget (frame-equivalents of 16 patches)")
    ax.set_ylabel("held-out accuracy / share of videos")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


# ---------------------------------------------------------------------------- helpers
def _atomic(path: Path, write) -> None:
    """``write(tmp)`` into a temporary file next to ``path``, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the results private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8"))


def _check_all_packed(input_jsonl: Path, out_jsonl: Path) -> None:
    """Stage 2 logs failed records and goes on; a benchmark must not train on a subset silently."""
    want = sum(1 for line in open(input_jsonl, encoding="utf-8") if line.strip())
    got = sum(1 for line in open(out_jsonl, encoding="utf-8") if line.strip())
    if got != want:
        out_jsonl.unlink()
        raise SystemExit(f"[flash] Stage 2 packed {got} of {want} training records (see its failure log)")


def _check_config(out: Path, config: dict, overwrite: bool) -> None:
    path = out / "run_config.json"
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text())
        if old != config:
            diff = {
                k: (old.get(k), config.get(k)) for k in sorted({*old, *config}) if old.get(k) != config.get(k)
            }
            raise SystemExit(
                f"[flash] {out} holds a run with other settings {diff} (old, new): "
                "use another --out, or --overwrite to start again"
            )
    if overwrite and out.exists():
        shutil.rmtree(out)
    _write_json(path, config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path, help="run directory (created; reruns resume)")
    parser.add_argument(
        "--quick", action="store_true", help=f"CI size: {SIZES['quick']} instead of {SIZES['default']}"
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 4, 8], help="frame-equivalents")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--train", type=int, help="training videos (default: the size's)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the size's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the size's)")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: the size's)")
    parser.add_argument("--seed", type=int, default=0, help="the tiny model's initialisation and data order")
    parser.add_argument(
        "--workers", type=int, default=2, help="processes per stage tool / data-loader workers"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete --out first and start again")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if any(b < 2 for b in args.budgets):
        parser.error("every budget must be at least 2 (the codec input keeps the whole first frame)")
    base_size = SIZES["quick" if args.quick else "default"]
    size = Size(
        args.train or base_size.train,
        args.epochs or base_size.epochs,
        base_size.limit,
        args.lr or base_size.learning_rate,
        args.batch_size or base_size.batch_size,
    )
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    budgets = sorted(set(args.budgets))
    _check_config(
        out,
        {"size": asdict(size), "budgets": budgets, "modes": args.modes, "seed": args.seed},
        args.overwrite,
    )
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = Runner(out, sys.executable, args.workers)
    media = out / "media"  # the eval's test videos (rendered by the task utils, here and in the steps)
    os.environ["FLASH_EVENTS_MEDIA"] = str(media)
    data = run.dataset(size)
    base = run.base(args.seed)
    docs = test_docs(size.limit)
    rows = []
    for budget in budgets:
        assets = None
        if "codec" in args.modes:
            train_codec = run.codec_train(data, budget)
            assets = run.codec_test(budget, media)
        first_video = data / flash.video_name("train", 0)
        patches = {mode: input_patches(mode, budget, base, first_video) for mode in args.modes}
        if len(set(patches.values())) != 1:
            raise SystemExit(
                f"[flash] budget {budget}: the modes read different numbers of patches {patches}"
            )
        for mode in args.modes:
            train_jsonl = train_codec if mode == "codec" else data / "train.jsonl"
            ckpt, seconds = run.train(mode, budget, data, base, train_jsonl, size, args.seed)
            scores = run.evaluate(mode, budget, ckpt, assets if mode == "codec" else None, media, size)
            colour, where = (scores[task] for task in TASKS)
            rows.append(
                {
                    "mode": mode,
                    "budget": budget,
                    "accuracy": (colour + where) / 2,
                    "colour": colour,
                    "where": where,
                    "flash_reached": flash_reached(mode, budget, docs, assets),
                    "patches": patches[mode],
                    "train_seconds": round(seconds, 1),
                }
            )
            print(
                f"[flash] {mode} budget {budget}: accuracy {rows[-1]['accuracy']:.3f} "
                f"(colour {colour:.3f}, where {where:.3f}), flash in the input for "
                f"{rows[-1]['flash_reached']:.0%} of test videos",
                flush=True,
            )
    table = results_table(rows)
    tested = f"{len(docs)} test videos x 2 questions"
    _write_json(out / "results.json", rows)
    _atomic(out / "results.md", lambda tmp: Path(tmp).write_text(table + "\n", encoding="utf-8"))
    plot(
        rows,
        out / "accuracy_vs_budget.png",
        f"flash events: {size.train} training videos, {size.epochs} epoch(s), {tested}",
    )
    print(
        f"\n{table}\n\n[flash] {tested}; chance 0.25. Wrote {out / 'results.json'}, {out / 'results.md'}, "
        f"{out / 'accuracy_vs_budget.png'} in {time.perf_counter() - start:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
