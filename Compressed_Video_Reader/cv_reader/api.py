"""Public API of the codec reader (``from cv_reader import api``)."""

from __future__ import annotations

from .canvas import CanvasGeometry
from .errors import UnsupportedCodecError, VideoReadError
from .mosaic import pack_mosaics
from .pipeline import CodecPatches, Selection, Stage1Params, codec_patchify, load_canvases, select_patches
from .reader import FrameRecord, probe, read_video
from .selection import global_topk, sample_frame_ids_uniform

__all__ = [
    "CanvasGeometry",
    "CodecPatches",
    "FrameRecord",
    "Selection",
    "Stage1Params",
    "UnsupportedCodecError",
    "VideoReadError",
    "codec_patchify",
    "global_topk",
    "load_canvases",
    "pack_mosaics",
    "probe",
    "read_video",
    "sample_frame_ids_uniform",
    "select_patches",
]
