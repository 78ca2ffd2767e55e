"""vLLM support for LLaVA-OV checkpoints: a ``vllm.general_plugins`` entry point.

With this project installed beside ``vllm`` (``bash scripts/setup_vllm_env.sh`` builds such a venv),
vLLM serves a checkpoint folder as it is:

    python -m vllm.entrypoints.openai.api_server --model CKPT --dtype float32 --enforce-eager

vLLM calls :func:`register` in every process it starts. It registers

* the model classes (``architectures`` of the folder's ``config.json``: ``LlavaQwenForCausalLM``,
  ``LlavaQwen3ForCausalLM``) as :class:`llava.vllm_plugin.model.LlavaOVForVLLM`: vLLM's own Qwen2 / Qwen3
  decoder, the project's OV-Encoder tower and projector, the checkpoint's processor for placeholders;
* the video loader ``llava_ov`` (:class:`VideoFileBytes`), chosen for checkpoints whose
  ``video_preprocessor_config.json`` names ``LlavaOVVideoProcessor`` (every folder this project writes):
  it hands the video file's bytes to the multimodal processor, which reads them in the checkpoint's
  video mode (uniform frames, or the codec reader's patches) exactly as the project does.

docs/serving.md has the flags and what differs from the built-in server.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The video loader's name (``--media-io-kwargs '{"video": {"video_backend": "llava_ov"}}'`` picks it by hand).
VIDEO_BACKEND = "llava_ov"
#: The key of a loaded video's metadata that marks its ``frames`` as the file's bytes.
FILE_BYTES = "llava_ov_file_bytes"
ARCHITECTURES = ("LlavaQwenForCausalLM", "LlavaQwen3ForCausalLM")


class VideoFileBytes:
    """A vLLM video loader that decodes nothing: the file's bytes (a 1-D ``uint8`` array) and the request's
    frame settings go to the multimodal processor, which reads the video with the checkpoint's settings."""

    @classmethod
    def load_bytes(cls, data: bytes, num_frames: int = -1, fps: float = -1, **kwargs: Any):
        if not data:
            raise ValueError("the video is empty (0 bytes)")
        metadata = {FILE_BYTES: True, "num_frames": int(num_frames), "fps": float(fps)}
        return np.frombuffer(data, dtype=np.uint8), metadata


def register() -> None:
    """The ``vllm.general_plugins`` entry point (``pyproject.toml``): models and the video loader."""
    from vllm import ModelRegistry
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

    import llava.model  # noqa: F401  (registers the configs with AutoConfig: no --trust-remote-code needed)

    for architecture in ARCHITECTURES:
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, "llava.vllm_plugin.model:LlavaOVForVLLM")
    if VIDEO_BACKEND not in VIDEO_LOADER_REGISTRY.name2class:

        @VIDEO_LOADER_REGISTRY.register(VIDEO_BACKEND, video_processor="LlavaOVVideoProcessor")
        class LlavaOVVideoLoader(VideoFileBytes, VideoLoader):
            pass


__all__ = ["ARCHITECTURES", "FILE_BYTES", "VIDEO_BACKEND", "VideoFileBytes", "register"]
