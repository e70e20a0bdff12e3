"""The fake vLLM of ``tests/vllm_fake.py`` as an importable ``vllm`` package (for torchrun
subprocesses: put ``tests`` and ``tests/fake_vllm`` on PYTHONPATH)."""

from vllm_fake import FakeLLM as LLM
from vllm_fake import FakeSamplingParams as SamplingParams

__all__ = ["LLM", "SamplingParams"]
