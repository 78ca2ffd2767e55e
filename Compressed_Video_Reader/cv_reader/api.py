"""Public API of the codec reader (``from cv_reader import api``, or the package root, which re-exports it): reading
and selecting (Stage 1), packing and reading packs (Stage 2), images, dataset files (``DatasetReader``,
``BadRecord``) and the Stage-2 record rewriting the trainer shares. ``cv_reader.util`` holds the small file
helpers (atomic writes, hashes) the project uses too."""

from __future__ import annotations

from .canvas import CanvasGeometry
from .dataset import BadRecord, DatasetReader, Record, check_record
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
    complete_pack,
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
from .records import VIDEO_TOKEN, placeholder_counts, rewrite_conversations, text_key
from .selection import global_topk, sample_frame_ids_uniform

__all__ = [
    "LLAVA_CODEC",
    "VIDEO_TOKEN",
    "BadRecord",
    "DatasetReader",
    "Record",
    "check_record",
    "complete_pack",
    "placeholder_counts",
    "rewrite_conversations",
    "text_key",
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
