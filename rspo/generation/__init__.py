"""Generation backends behind one interface: K seeded samples per prompt."""

from rspo.generation.base import Completion, GenerationBackend, SamplingParams
from rspo.generation.factory import build_backend

__all__ = ["Completion", "GenerationBackend", "SamplingParams", "build_backend"]
