"""Public API of the codec reader (``from cv_reader import api``)."""

from __future__ import annotations

from .canvas import CanvasGeometry
from .errors import (
    CodecInputError,
    ImageReadError,
    ImageTooLargeError,
    MediaError,
    UnsupportedCodecError,
    VideoReadError,
)
from .images import (
    check_regular_file,
    default_max_pixels,
    open_regular_file,
    read_image,
    read_image_size,
    to_rgb8,
)
from .mosaic import pack_mosaics
from .pack import (
    PackGeometry,
    check_codec_inputs,
    check_pack,
    load_mosaics,
    load_positions,
    pack_geometry,
    read_pack,
)
from .pipeline import (
    LLAVA_CODEC,
    CodecPatches,
    Selection,
    Stage1Params,
    codec_patchify,
    load_canvases,
    read_frames,
    select_patches,
)
from .reader import FrameRecord, probe, read_video
from .selection import global_topk, sample_frame_ids_uniform

__all__ = [
    "LLAVA_CODEC",
    "PackGeometry",
    "CanvasGeometry",
    "CodecInputError",
    "CodecPatches",
    "FrameRecord",
    "ImageReadError",
    "ImageTooLargeError",
    "MediaError",
    "Selection",
    "Stage1Params",
    "UnsupportedCodecError",
    "VideoReadError",
    "check_codec_inputs",
    "check_pack",
    "check_regular_file",
    "codec_patchify",
    "default_max_pixels",
    "global_topk",
    "load_canvases",
    "load_mosaics",
    "load_positions",
    "open_regular_file",
    "pack_geometry",
    "pack_mosaics",
    "probe",
    "read_frames",
    "read_image",
    "read_image_size",
    "read_pack",
    "read_video",
    "sample_frame_ids_uniform",
    "select_patches",
    "to_rgb8",
]
