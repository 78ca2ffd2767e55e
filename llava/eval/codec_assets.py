"""Precomputed codec inputs of benchmark videos, in either layout, and the count of what each video used.

A video's codec input (mosaics + ``positions_thw.npy``) is looked up under each offline root, for the
request's task name and then for each shorter ``_``-prefix of it (``mvbench_action_antonym``,
``mvbench_action``, ``mvbench``), so one folder can serve a task group:

* upstream's layout: ``<root>/<task>_offline/assets/<video stem>/`` holding ``mosaic_000.jpg ...`` and
  ``positions_thw.npy`` (a failed video left ``error.json`` there instead);
* this project's Stage-2 packs (``stage2.py --mode pack``, what
  ``scripts/precompute_codec_patch/preprocess_video_benchmark.sh`` writes):
  ``<root>/<task>/packs/sample_<id>__<video stem>__<path hash>/pack.json`` or the same directories
  directly under ``<root>`` (a pack with the video's own path hash wins when a stem has several).

An asset is data: it is read at its own canvas, patch grid and mosaic count
(``VisualProcessor.codec_pack``), whatever ``codec_canvas`` / ``codec_frames`` / ``codec_images`` say (those
govern the videos computed online), so one run may read assets of several geometries.

:class:`CodecAssetStats` counts the videos read from assets (by geometry), computed online and failed (with
why), so a run can say exactly what it evaluated on; nothing falls back silently.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cv_reader import complete_pack
from cv_reader.util import short_hash


@dataclass(frozen=True)
class CodecAsset:
    """One video's precomputed input: its mosaic files (in order) and its ``positions_thw.npy``."""

    mosaics: tuple[str, ...]
    positions: str
    source: str  # the directory it came from


def task_candidates(task: str | None) -> list[str]:
    """``a_b_c`` -> ``[a_b_c, a_b, a]``: the task folder names an asset may live under."""
    if not task:
        return []
    parts = task.split("_")
    return ["_".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _upstream_asset(directory: Path) -> CodecAsset | None:
    positions = directory / "positions_thw.npy"
    if not positions.is_file():
        return None
    mosaics = sorted(str(p) for p in directory.glob("mosaic_*.jpg"))
    return CodecAsset(tuple(mosaics), str(positions), str(directory)) if mosaics else None


def _pack_asset(directory: Path) -> CodecAsset | None:
    pack, _ = complete_pack(directory)
    if pack is None or "positions_thw" not in pack:
        return None
    return CodecAsset(tuple(pack["image"]), pack["positions_thw"], str(directory))


class CodecAssets:
    """Finds the precomputed codec input of a video under one or more offline roots."""

    def __init__(self, roots: str | os.PathLike | list | None):
        if roots is None or roots == "":
            roots = []
        elif isinstance(roots, (str, os.PathLike)):
            roots = [r for r in str(roots).split(os.pathsep) if r]
        self.roots = [Path(r).expanduser() for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise ValueError(f"codec_offline_root: {root} is not a directory")
        self._packs: dict[Path, dict[str, list[Path]]] = {}

    def find(self, video: str | os.PathLike, task: str | None = None) -> CodecAsset | None:
        """The asset of ``video`` for ``task``, or ``None`` when no root has a complete one."""
        stem = Path(video).stem
        for root in self.roots:
            for name in task_candidates(task):
                upstream = root / f"{name}_offline" / "assets" / stem
                if upstream.is_dir() and (asset := _upstream_asset(upstream)) is not None:
                    return asset
                if (asset := self._from_packs(root / name / "packs", video)) is not None:
                    return asset
            if (asset := self._from_packs(root, video)) is not None:
                return asset
        return None

    def _from_packs(self, folder: Path, video: str | os.PathLike) -> CodecAsset | None:
        stem = Path(video).stem
        candidates = self._pack_index(folder).get(stem, [])
        preferred = [d for d in candidates if d.name.endswith("__" + short_hash(str(Path(video))))]
        for directory in preferred or (candidates if len(candidates) == 1 else []):
            if (asset := _pack_asset(directory)) is not None:
                return asset
        return None

    def _pack_index(self, folder: Path) -> dict[str, list[Path]]:
        """``{video stem: [pack directories]}`` of a folder of Stage-2 packs (read once)."""
        if folder not in self._packs:
            index: dict[str, list[Path]] = {}
            if folder.is_dir():
                for entry in os.scandir(folder):
                    if entry.is_dir() and entry.name.startswith("sample_") and entry.name.count("__") >= 2:
                        stem = entry.name.split("__", 1)[1].rsplit("__", 1)[0]
                        index.setdefault(stem, []).append(Path(entry.path))
            self._packs[folder] = index
        return self._packs[folder]


@dataclass
class CodecAssetStats:
    """What the videos of a run were evaluated on."""

    from_assets: int = 0
    asset_geometries: Counter = field(default_factory=Counter)  # str(PackGeometry) -> videos
    online: int = 0
    frames: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (video, why)
    failed_images: list[tuple[str, str]] = field(default_factory=list)  # (image, why)

    def add_asset(self, geometry: object) -> None:
        """Count a video read from an asset of ``geometry`` (``cv_reader.pack.PackGeometry``)."""
        self.from_assets += 1
        self.asset_geometries[str(geometry)] += 1

    def summary(self) -> str:
        lines = [
            f"videos: {self.from_assets} from precomputed codec assets, {self.online} codec computed online, "
            f"{self.frames} as uniform frames, {len(self.failed)} failed"
        ]
        if self.asset_geometries:
            lines.append("  codec assets by geometry: "
                         + ", ".join(f"{g}: {n}" for g, n in sorted(self.asset_geometries.items())))
        lines += [f"  failed: {video}: {why}" for video, why in self.failed]
        if self.failed_images:
            lines.append(f"images: {len(self.failed_images)} failed (their requests were answered empty)")
            lines += [f"  failed: {image}: {why}" for image, why in self.failed_images]
        return "\n".join(lines)


__all__ = ["CodecAsset", "CodecAssetStats", "CodecAssets", "task_candidates"]
