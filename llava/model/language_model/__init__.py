from .llava_qwen import LlavaQwenConfig, LlavaQwenForCausalLM
from .llava_qwen3 import LlavaQwen3Config, LlavaQwen3ForCausalLM

__all__ = ["LlavaQwen3Config", "LlavaQwen3ForCausalLM", "LlavaQwenConfig", "LlavaQwenForCausalLM"]
