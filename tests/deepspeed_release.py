"""Run under torchrun by tests/test_distributed.py: a DeepSpeed ZeRO-3 engine's release()
leaves no hooks on the module and torch.nn.functional.linear as it was, and once the module
is dropped (as the loop does after the checkpoint) the engine and its optimizer are freed."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from rspo.distributed import init_distributed, shutdown
from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.modeling import free_memory
from rspo.training.deepspeed import DeepSpeedPolicy
from rspo.training.trainer import build_optimizer

from fixtures_lm import gym_training


def main() -> None:
    dist = init_distributed("cpu")
    linear = F.linear
    model = build_tiny_llama(build_byte_tokenizer(), hidden_size=32, num_layers=2, num_heads=2)
    cfg = gym_training(micro_batch_size=2)
    ds = DeepSpeedPolicy(model, build_optimizer(model, cfg), cfg, dist)
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(dist.rank))
    for _ in range(2):  # two micro-batches, one step
        ds.backward(ds.forward_model(input_ids=ids).logits.float().logsumexp(-1).mean())
    norm = ds.step()
    engine, optimizer = weakref.ref(ds.engine), weakref.ref(ds.engine.optimizer)
    state = ds.full_state_dict()
    refs = ds.release()
    assert not model._forward_pre_hooks and not model._forward_hooks, "engine hooks left"
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert F.linear is linear, "torch.nn.functional.linear was replaced"
    gone = [*refs, weakref.ref(model)]
    del model, ds
    free_memory(gone)  # what the loop does after saving the checkpoint
    assert engine() is None and optimizer() is None, "engine survived the dropped module"
    if dist.is_main:
        assert norm > 0 and len(state) > 0
        print(f"released: {len(state)} tensors gathered, grad norm {norm:.4f}")
    shutdown()


if __name__ == "__main__":
    main()
