"""LLaVA with the OneVision-Encoder. Importing the package registers its models with transformers."""

from . import model  # noqa: F401  (registers the Auto classes)

__version__ = "0.1.0"
