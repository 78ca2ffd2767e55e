from .builder import SpatialMergeProjector, build_vision_projector

__all__ = ["SpatialMergeProjector", "build_vision_projector"]
