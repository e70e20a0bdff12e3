"""float32 ``nn.Linear`` layers on the CPU through oneDNN instead of torch's default BLAS.

torch's CPU builds send a float32 matmul to MKL's ``sgemm``. On AMD CPUs MKL takes a
generic code path: on the Zen 5 EPYC this project measures on it runs at ~100 GFLOP/s,
while oneDNN (the other GEMM library inside the same torch build, reached through
``torch.ops.mkldnn._linear_pointwise``) runs the same products at ~240 in full float32
(IEEE, no reduced-precision math). :func:`route_linear` turns a model's ``nn.Linear``
layers into :class:`OneDNNLinear` (a class swap: same parameters and state dict), whose
forward and backward run on oneDNN (an autograd function: grad input, grad weight and
grad bias are oneDNN products too). A layer falls back to ``F.linear`` for any input that
is not a plain float32 CPU tensor, under autocast, and when the op is missing or fails its
one-time check against ``F.linear``. Results differ from MKL's by float rounding only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

#: ``model.cpu_linear`` values: auto (oneDNN for float32 CPU models where torch has it and
#: it passes its check) | onednn (the same, an error where it cannot) | torch (F.linear)
MODES = ("auto", "onednn", "torch")

#: products smaller than this (rows x in x out multiply-adds) stay with F.linear: a oneDNN
#: call costs more to set up than MKL's, and more again the first time it meets a shape (it
#: builds a kernel per shape; a decode loop whose rows finish one by one meets a new one
#: nearly every step); the threshold and its measurements are in docs/benchmarks.md
MIN_MACS = 1 << 24

_available: bool | None = None


def _autocast_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled()


def _wrapped(t: torch.Tensor) -> bool:
    """A functorch (vmap / grad) wrapper: its type() is torch.Tensor, its storage is not."""
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check and check(t))


def _op() -> Any:
    return torch.ops.mkldnn._linear_pointwise


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias) by oneDNN; ``x`` (..., in), ``weight`` (out, in), any strides."""
    return _op()(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b with the three backward products by oneDNN as well."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        # like F.linear: the input only for the weight's gradient, the weight for the input's
        need_x, need_w = ctx.needs_input_grad[:2]
        ctx.save_for_backward(x if need_w else None, weight if need_x else None)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(grad, weight.t(), None)  # (..., out) @ (out, in)
        g2 = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            # (in, N) @ (N, out), transposed: oneDNN makes its input operand contiguous, so
            # that is x's transpose (N x in) rather than the gradient's (N x out: the vocab
            # for an LM head); the result is copied to the weight's layout
            gw = _mm(x.reshape(-1, x.shape[-1]).t(), g2.t(), None).t().contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _plain(t: torch.Tensor | None) -> bool:
    return t is None or (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.dtype == torch.float32
        and t.device.type == "cpu"
        and t.layout == torch.strided
        and not _wrapped(t)
    )


def onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.linear`` by oneDNN for plain float32 CPU tensors (autograd included) and products
    of at least :data:`MIN_MACS`, else ``F.linear`` itself."""
    if (
        x.numel() * weight.shape[0] < MIN_MACS
        or x.dim() < 2
        or not (_plain(x) and _plain(weight) and _plain(bias))
        or _autocast_cpu()
    ):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return _OneDNNLinear.apply(x, weight, bias)
    return _mm(x, weight, bias)


class OneDNNLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward is :func:`onednn_linear` (set by :func:`route_linear`
    on existing layers by class swap: same parameters, state dict and hooks)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """``F.linear`` by oneDNN where it applies."""
        return onednn_linear(input, self.weight, self.bias)


def onednn_available() -> bool:
    """Whether this torch has oneDNN's linear op and it matches ``F.linear`` (values and
    gradients, float32) on a small check; run once per process."""
    global _available
    if _available is None:
        _available = _check()
    return _available


def _check() -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    with torch.inference_mode(False), torch.enable_grad():
        return _check_values()


def _check_values() -> bool:
    try:
        _autocast_cpu()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(3, 5, 24, generator=gen, dtype=torch.float64)
        w = torch.randn(16, 24, generator=gen, dtype=torch.float64)
        b = torch.randn(16, generator=gen, dtype=torch.float64)
        g = torch.randn(3, 5, 16, generator=gen, dtype=torch.float64)
        ref = [t.clone().requires_grad_() for t in (x, w, b)]
        F.linear(*ref).backward(g)
        got = [t.float().requires_grad_() for t in (x, w, b)]
        y = _OneDNNLinear.apply(*got)
        y.backward(g.float())
        pairs = [(y, F.linear(x, w, b))] + [(a.grad, r.grad) for a, r in zip(got, ref)]
        return all(torch.allclose(a.double(), r, rtol=1e-5, atol=1e-5) for a, r in pairs)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _routable(model: torch.nn.Module) -> bool:
    p = next(model.parameters(), None)
    return p is not None and p.device.type == "cpu" and p.dtype == torch.float32


def _distributed() -> bool:
    """Several processes (gloo on CPU): FSDP2 / ZeRO-3 swap parameter storage around the
    forward and backward, which auto leaves to F.linear, the path those engines test."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def route_linear(model: torch.nn.Module, mode: str = "auto") -> int:
    """Turn the ``nn.Linear`` layers (exactly that class: not quantized or adapter
    subclasses) of a float32 CPU ``model`` into :class:`OneDNNLinear` (``mode`` onednn, or
    auto in a single process); ``torch`` turns them back. Returns the number of layers
    routed to oneDNN."""
    if mode not in MODES:
        raise ValueError(f"model.cpu_linear: unknown value {mode!r}; allowed: {', '.join(MODES)}")
    on = mode != "torch" and _routable(model) and not (mode == "auto" and _distributed())
    if on and not onednn_available():
        if mode == "onednn":
            raise ValueError(
                "model.cpu_linear: onednn: this torch has no working oneDNN linear "
                "(torch.ops.mkldnn._linear_pointwise); use auto or torch"
            )
        on = False
    n = 0
    for m in model.modules():
        if type(m) in (torch.nn.Linear, OneDNNLinear):
            m.__class__ = OneDNNLinear if on else torch.nn.Linear
            n += on
    return n


def routed(model: torch.nn.Module) -> int:
    """How many of ``model``'s linear layers run through oneDNN."""
    return sum(type(m) is OneDNNLinear for m in model.modules())
