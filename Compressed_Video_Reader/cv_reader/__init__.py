"""cv_reader: codec-style patch selection for video (motion vectors, residuals, top-K patches).

Pure PyAV + numpy: H.264/MPEG motion vectors come from FFmpeg's side data, other codecs get
block-matching estimates; no patched FFmpeg build is needed.
"""

from .api import (
    CanvasGeometry,
    CodecPatches,
    FrameRecord,
    Selection,
    Stage1Params,
    UnsupportedCodecError,
    VideoReadError,
    codec_patchify,
    global_topk,
    load_canvases,
    pack_mosaics,
    probe,
    read_video,
    sample_frame_ids_uniform,
    select_patches,
)

__version__ = "0.1.0"

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
