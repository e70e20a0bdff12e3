"""float32 CPU linear layers through oneDNN (rspo.utils.onednn, model.cpu_linear)."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref

import pytest
import torch
import torch.nn.functional as F

from rspo.utils import onednn
from rspo.utils.onednn import MIN_MACS, onednn_available, onednn_linear, route_linear, routed

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch without oneDNN linear")


def _spy(monkeypatch) -> list[tuple[int, ...]]:
    """Shapes of the inputs of every oneDNN product (forward and backward)."""
    calls: list[tuple[int, ...]] = []
    real = onednn._mm

    def spy(x, w, b):
        calls.append(tuple(x.shape))
        return real(x, w, b)

    monkeypatch.setattr(onednn, "_mm", spy)
    return calls


CASES = {
    "2d+bias": ((512, 128), 256, True, False),
    "3d": ((8, 64, 128), 512, False, False),
    "3d+bias, transposed input": ((64, 8, 128), 384, True, True),
}


@needs_onednn
@pytest.mark.parametrize("case", list(CASES))
def test_values_and_gradients_match_float64(case, monkeypatch):
    """Output and the gradients of input, weight and bias equal float64 F.linear's to
    float32 rounding, every product (3 with grads) is a oneDNN call, and MKL's float32
    result is no closer to float64 than oneDNN's (both full IEEE float32)."""
    shape, out, bias, transposed = CASES[case]
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(*shape, generator=g, dtype=torch.float64)
    if transposed:
        x64 = x64.transpose(0, 1)  # a strided view: (8, 64, 128) with swapped strides
    w64 = torch.randn(out, shape[-1], generator=g, dtype=torch.float64) / shape[-1] ** 0.5
    b64 = torch.randn(out, generator=g, dtype=torch.float64) if bias else None
    up = torch.randn(*x64.shape[:-1], out, generator=g, dtype=torch.float64)
    leaves64 = [t.detach().clone().requires_grad_() for t in (x64, w64) + ((b64,) if bias else ())]
    F.linear(*leaves64).backward(up)
    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    y = onednn_linear(*leaves)
    y.backward(up.float())
    assert len(calls) == 3  # forward, grad input, grad weight (grad bias is a sum)
    ref_y = F.linear(x64, w64, b64)
    err = (y.double() - ref_y).abs().max().item()
    mkl = (F.linear(*(t.detach().float() for t in leaves64)).double() - ref_y).abs().max().item()
    assert err <= 1e-5 * ref_y.abs().max().item()
    assert err <= 4 * mkl + 1e-7  # no less accurate than torch's default path
    for got, want in zip(leaves, leaves64):
        scale = want.grad.abs().max().item()
        assert (got.grad.double() - want.grad).abs().max().item() <= 1e-5 * scale


@needs_onednn
def test_frozen_weight_or_input_computes_only_the_grads_asked(monkeypatch):
    """A frozen weight (LoRA's base) gets no gradient and costs no grad-weight product; an
    input without grad costs no grad-input product."""
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 128, generator=g, requires_grad=True)
    w = torch.randn(256, 128, generator=g)
    onednn_linear(x, w).sum().backward()
    assert w.grad is None and len(calls) == 2
    y = onednn_linear(x, w)  # like F.linear, the input is kept only for the weight's grad
    assert y.grad_fn.saved_tensors[0] is None and y.grad_fn.saved_tensors[1] is not None
    torch.testing.assert_close(x.grad, torch.ones(512, 256) @ w, rtol=1e-5, atol=1e-5)
    calls.clear()
    w.requires_grad_()
    onednn_linear(x.detach(), w).sum().backward()
    assert len(calls) == 2 and w.grad is not None


def test_small_products_and_other_inputs_take_f_linear(monkeypatch):
    """Below MIN_MACS, and for non-float32, autocast or 1-D inputs, the result is F.linear's
    bitwise and oneDNN is not called."""
    calls = _spy(monkeypatch)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(128, 128, generator=g)
    small = torch.randn(MIN_MACS // (128 * 128) - 1, 128, generator=g)
    cases = [
        (small, w),
        (torch.randn(4, 128, generator=g), w),
        (torch.randn(128, generator=g), w),  # 1-D input
        (torch.randn(1024, 128, generator=g, dtype=torch.float64), w.double()),
        (torch.randn(1024, 128, generator=g).bfloat16(), w.bfloat16()),
    ]
    for x, wt in cases:
        assert torch.equal(onednn_linear(x, wt), F.linear(x, wt))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randn(1024, 128, generator=g)
        got = onednn_linear(x, w)
        assert got.dtype == torch.bfloat16 and torch.equal(got, F.linear(x, w))
    assert calls == []


def _tiny():
    from rspo.gym.model import build_tiny_llama
    from rspo.gym.tokenizer import build_byte_tokenizer

    tok = build_byte_tokenizer()
    return build_tiny_llama(tok, hidden_size=128, num_layers=2, num_heads=4, seed=0)


@needs_onednn
def test_route_linear_keeps_a_models_numbers_and_can_be_undone(monkeypatch):
    """Routed: every nn.Linear is on oneDNN, logits and a training step's gradients equal the
    unrouted model's to float32 rounding, a deepcopy stays routed, the state dict is
    untouched; 'torch' restores F.linear (bitwise the unrouted logits)."""
    model, plain = _tiny(), _tiny()
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert route_linear(model) == n_linear == routed(model) and routed(plain) == 0
    ids = torch.randint(0, 200, (8, 128), generator=torch.Generator().manual_seed(3))
    calls = _spy(monkeypatch)
    out = {}
    for name, m in (("routed", model), ("plain", plain)):
        loss = F.cross_entropy(m(input_ids=ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        out[name] = (loss.detach(), {k: p.grad for k, p in m.named_parameters()})
    assert len(calls) == 3 * n_linear  # every layer's product is big enough: all on oneDNN
    torch.testing.assert_close(out["routed"][0], out["plain"][0], rtol=1e-6, atol=1e-6)
    for k, grad in out["plain"][1].items():
        torch.testing.assert_close(out["routed"][1][k], grad, rtol=1e-4, atol=1e-6)
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert routed(copy.deepcopy(model)) == n_linear
    assert route_linear(model, "torch") == 0 and routed(model) == 0
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)


@needs_onednn
def test_routed_models_die_by_reference_counting_and_pickle():
    """A routed model is freed when its last reference goes (no garbage collection: rspo
    drops models that way) and pickles (torch.save of a module) with its routing."""
    model = _tiny()
    assert route_linear(model) > 0
    ref = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert ref() is None
    finally:
        gc.enable()
    seq = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    route_linear(seq)
    back = pickle.loads(pickle.dumps(seq))
    x = torch.randn(1024, 128)
    assert routed(back) == 2 and torch.equal(back(x), seq(x))


@pytest.mark.parametrize("ctx", ["no_grad", "inference_mode"])
def test_the_check_passes_under_no_grad(ctx, monkeypatch):
    """The one-time check runs its backward even when the first model is routed under
    no_grad or inference_mode (it would otherwise fail and turn oneDNN off for good)."""
    monkeypatch.setattr(onednn, "_available", None)
    expected = onednn._check()
    monkeypatch.setattr(onednn, "_available", None)
    with getattr(torch, ctx)():
        assert onednn_available() is expected
        assert route_linear(torch.nn.Linear(256, 256)) == int(expected)


def test_route_linear_refuses_what_it_cannot_do(monkeypatch):
    """Unknown mode: an error naming the key; a bfloat16 model is left alone; onednn where
    the op fails its check: an error, auto: F.linear."""
    model = _tiny()
    with pytest.raises(ValueError, match=r"model.cpu_linear: unknown value 'fast'"):
        route_linear(model, "fast")
    assert route_linear(_tiny().bfloat16()) == 0
    monkeypatch.setattr(onednn, "_available", False)
    assert route_linear(model, "auto") == 0 and routed(model) == 0
    with pytest.raises(ValueError, match="model.cpu_linear: onednn: this torch has no working"):
        route_linear(model, "onednn")


def test_auto_leaves_distributed_runs_to_f_linear(monkeypatch):
    """Under several processes auto keeps F.linear; onednn still routes."""
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    assert route_linear(_tiny(), "auto") == 0
    if onednn_available():
        assert route_linear(_tiny(), "onednn") > 0


def test_check_rejects_an_op_that_disagrees_with_f_linear(monkeypatch):
    """The one-time check compares against F.linear: an op off by a little fails it."""
    monkeypatch.setattr(onednn, "_mm", lambda x, w, b: F.linear(x, w, b) * (1 + 1e-3))
    assert onednn._check() is False
    monkeypatch.setattr(onednn, "_mm", lambda x, w, b: F.linear(x, w, b))
    assert onednn._check() is True


@needs_onednn
def test_load_model_routes_by_config(tmp_path):
    """rspo.modeling.load_model routes a float32 CPU model per model.cpu_linear."""
    from rspo.modeling import load_model

    from fixtures_lm import make_tiny_model_dir

    make_tiny_model_dir(tmp_path)
    assert routed(load_model(str(tmp_path))) > 0
    assert routed(load_model(str(tmp_path), cpu_linear="torch")) == 0
    assert routed(load_model(str(tmp_path), dtype="bfloat16")) == 0
