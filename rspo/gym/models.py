"""The gym's base models as ``model.path`` names: ``gym`` (facts) and ``gym-skills``.

Imported by the model registry (:data:`rspo.modeling.MODEL_ALIASES`) on its first lookup.
"""

from __future__ import annotations

from rspo.gym.base import base_model_path
from rspo.gym.skills.base import skills_base_path
from rspo.modeling import register_model_alias

register_model_alias("gym", base_model_path)
register_model_alias("gym-skills", skills_base_path)
