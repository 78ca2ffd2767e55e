"""Entry point of the ``lmms_eval.models`` group: registers ``llava_ov_encoder`` with stock lmms-eval.

lmms-eval loads entry points while ``lmms_eval.models`` is still being imported, so this module imports
nothing of lmms-eval (or of the model) at its top; the manifest is built when lmms-eval calls it.
"""

from __future__ import annotations


def manifests():
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="llava_ov_encoder",
        simple_class_path="llava.eval.lmms_model.LlavaOVEncoder",
    )
