"""``vllm.lora.request.LoRARequest`` of the fake vLLM."""

from vllm_fake import FakeLoRARequest as LoRARequest

__all__ = ["LoRARequest"]
