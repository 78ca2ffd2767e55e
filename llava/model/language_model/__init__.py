from .llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
from .llava_qwen3 import LlavaQwen3Config, LlavaQwen3ForCausalLM

__all__ = ["LlavaQwenConfig", "LlavaQwenForCausalLM", "LlavaQwen3Config", "LlavaQwen3ForCausalLM"]
