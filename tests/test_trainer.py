"""The trainer: micro-batch invariance of the gradient, resume from a saved step."""

from __future__ import annotations

import pytest
import torch

from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.objectives import RSPOLoss
from rspo.training.trainer import RefExample, TrainExample, accumulate_gradients, train_policy

from fixtures_lm import gym_training


def _data(n_prompts=4, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ex, refs = [], []
    for i in range(n_prompts):
        prompt = list(range(65 + i, 70 + i))
        for _ in range(K):
            L = int(torch.randint(2, 7, (1,), generator=g))
            resp = torch.randint(97, 123, (L,), generator=g).tolist()
            ex.append(
                TrainExample(
                    prompt, resp, float(torch.rand(1, generator=g)), -3.0 * L, -3.1 * L, i, 0
                )
            )
        refs.append(RefExample(prompt, [97, 98, 99], -9.0, i))
    return ex, refs


def _model():
    tok = build_byte_tokenizer()
    return build_tiny_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=3).double(), tok


@pytest.mark.parametrize(
    "spec",
    ["", "reverse_kl", "forward_kl[nll]", "0.5*forward_kl[nll] + 0.5*reverse_kl[k2]", "chi2"],
)
def test_gradient_does_not_depend_on_micro_batch_size(spec):
    ex, refs = _data()
    by_group = {r.group: [r] for r in refs}
    loss = RSPOLoss(eta=5.0, regularizer=spec or None, coef=0.3 if spec else 0.0)
    idx = list(range(len(ex)))
    grads, totals = [], []
    for mb in (16, 5, 1):
        model, tok = _model()
        totals.append(accumulate_gradients(model, ex, idx, loss, mb, tok.pad_token_id, by_group))
        grads.append(
            torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        )
    for g, t in zip(grads[1:], totals[1:]):
        assert torch.allclose(g, grads[0], atol=1e-10, rtol=1e-8)
        # every logged metric, not only the loss: loss terms add up, means and maxima agree
        assert t.keys() == totals[0].keys()
        for k, v in totals[0].items():
            assert t[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
    assert grads[0].abs().sum() > 0
    one = totals[0]
    assert one["loss"] == pytest.approx(one["selfplay_loss"] + one["reg_loss"], rel=1e-12)


def test_resume_from_saved_state_matches_uninterrupted(tmp_path):
    ex, refs = _data(n_prompts=6)
    cfg = gym_training(lr=1e-2, epochs=2, batch_size=8, micro_batch_size=4, save_steps=2)
    loss = RSPOLoss(eta=5.0, regularizer="reverse_kl", coef=0.2)
    full, tok = _model()
    train_policy(full, ex, loss, cfg, seed=1, pad_id=tok.pad_token_id)

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == 3:
            raise Stop

    part, _ = _model()
    with pytest.raises(Stop):
        train_policy(
            part, ex, loss, cfg, 1, tok.pad_token_id, state_dir=tmp_path / "st", on_step=stop_at
        )
    assert (tmp_path / "st" / "optimizer.safetensors").exists()
    resumed, _ = _model()  # fresh weights: everything must come from the saved state
    train_policy(resumed, ex, loss, cfg, 1, tok.pad_token_id, state_dir=tmp_path / "st")
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_forward_kl_nll_without_reference_samples_is_an_error():
    ex, _ = _data()
    model, tok = _model()
    loss = RSPOLoss(eta=5.0, regularizer="forward_kl[nll]", coef=0.1)
    with pytest.raises(ValueError, match="π_ref"):
        train_policy(
            model, ex, loss, gym_training(batch_size=16, micro_batch_size=8), 0, tok.pad_token_id
        )


def test_train_state_with_frozen_parameters_saves_only_trainable_ones(tmp_path):
    """LoRA-style models: the state holds the trainable tensors only, restores them exactly,
    and refuses a model whose trainable set differs (naming the file)."""
    from rspo.training.checkpoint import load_model_state, save_train_state

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_train_state(tmp_path / "st", model, opt, 1, {})
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [
        "optimizer.safetensors", "trainable.safetensors", "trainer_state.json"
    ]  # fmt: skip
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    fresh[0].load_state_dict(model[0].state_dict())
    fresh[0].requires_grad_(False)
    load_model_state(tmp_path / "st", fresh)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    other[1].requires_grad_(False)
    with pytest.raises(ValueError, match="trainable.safetensors: trainable parameters differ"):
        load_model_state(tmp_path / "st", other)
