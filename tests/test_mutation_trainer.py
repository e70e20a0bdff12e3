"""Gradient accumulation (``accumulate_gradients``) against an independent full-batch
reference: one forward of every sample, the loss as plain means (no global counts), one
backward. In float64 the accumulated gradient must equal it to 1e-10 for every micro-batch
size and every data-parallel split; each π_ref sample must be counted exactly once; every
rank must run as many backward passes as rank 0 (lockstep), padding with passes that add
exactly nothing."""

from __future__ import annotations

import math

import pytest
import torch

from rspo.config import TrainingConfig
from rspo.gym.model import build_tiny_llama
from rspo.gym.tokenizer import build_byte_tokenizer
from rspo.modeling import sequence_logprobs
from rspo.objectives import RSPOLoss, SampleBatch
from rspo.training.trainer import RefExample, TrainExample, accumulate_gradients, train_policy

TOK = build_byte_tokenizer()
PAD = TOK.pad_token_id


def _model():
    return build_tiny_llama(TOK, hidden_size=32, num_layers=2, num_heads=2, seed=5).double()


def _data(n_prompts=4, K=4, n_ref=2, seed=0):
    """K samples per prompt (groups interleaved, so a group's first sample is not at a
    micro-batch boundary), ``n_ref`` π_ref samples per prompt, labels +1/−1 per pair."""
    g = torch.Generator().manual_seed(seed)
    ex, refs = [], []
    for i in range(n_prompts):
        prompt = list(range(65 + i, 69 + 2 * i))
        for k in range(K):
            L = int(torch.randint(2, 6, (1,), generator=g))
            resp = torch.randint(97, 123, (L,), generator=g).tolist()
            w = float(torch.rand(1, generator=g))
            ex.append(TrainExample(prompt, resp, w, -3.0 * L + w, -3.2 * L, i, 1 - 2 * (k % 2)))
        for r in range(n_ref):
            refs.append(RefExample(prompt, [97 + r, 98, 99 + i][: 2 + r], -7.0 - r - i, i))
    return ex, refs


def _grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _full_batch(ex, idx, refs, loss_fn):
    """The reference: the whole batch in one forward, the loss's own means."""
    model = _model()
    rows = [ex[i] for i in idx]
    groups = {r.group for r in rows}
    rr = [r for r in refs if r.group in groups]
    lp = sequence_logprobs(model, [e.prompt_ids for e in rows], [e.response_ids for e in rows], PAD)
    batch = SampleBatch(
        logp_theta=lp,
        logp_t=torch.tensor([e.logp_t for e in rows], dtype=torch.float64),
        logp_ref=torch.tensor([e.logp_ref for e in rows], dtype=torch.float64),
        win_rate=torch.tensor([e.win_rate for e in rows], dtype=torch.float64),
        label=torch.tensor([e.label for e in rows], dtype=torch.float64)
        if loss_fn.pairwise
        else None,
    )
    if loss_fn.needs_ref_samples:
        batch.ref_logp_theta = sequence_logprobs(
            model, [r.prompt_ids for r in rr], [r.response_ids for r in rr], PAD
        )
        batch.ref_logp_ref = torch.tensor([r.logp_ref for r in rr], dtype=torch.float64)
    loss, metrics = loss_fn(batch)
    loss.backward()
    return _grad(model), metrics


def _by_group(refs):
    out: dict[int, list[RefExample]] = {}
    for r in refs:
        out.setdefault(r.group, []).append(r)
    return out


SPECS = ["forward_kl[nll]", "0.5*forward_kl[nll] + 0.5*reverse_kl[k2]", "reverse_kl", "chi2"]


@pytest.mark.parametrize("spec", SPECS)
def test_accumulated_gradient_is_the_full_batch_gradient(spec):
    ex, refs = _data()
    loss_fn = RSPOLoss(eta=4.0, regularizer=spec, coef=0.7)
    idx = [3, 0, 9, 4, 13, 1, 8, 14, 6, 11, 2, 15, 5, 7]  # shuffled, two samples left out
    want, want_m = _full_batch(ex, idx, refs, loss_fn)
    assert want.abs().sum() > 0
    for mb in (1, 2, 3, 5, 14, 64):
        model = _model()
        got_m = accumulate_gradients(model, ex, idx, loss_fn, mb, PAD, _by_group(refs))
        assert torch.allclose(_grad(model), want, rtol=0, atol=1e-10), mb
        # loss terms add up to the full-batch values; means and maxima are the batch's
        for k in ("loss", "selfplay_loss", "reg", "reg_loss", "logratio_mean",
                  "ref_logratio_mean", "win_rate_mean", "log_is_weight_max"):  # fmt: skip
            assert got_m[k] == pytest.approx(want_m[k], rel=1e-11, abs=1e-12), (mb, k)


@pytest.mark.parametrize("loss_type", ["sppo_hard", "inpo"])
def test_pair_losses_accumulate_whole_pairs_to_the_full_batch_gradient(loss_type):
    ex, refs = _data()
    tau = 0.05 if loss_type == "inpo" else None
    loss_fn = RSPOLoss(
        eta=4.0, regularizer="forward_kl[nll]", coef=0.3, loss_type=loss_type, tau=tau
    )
    idx = [6, 7, 0, 1, 12, 13, 4, 5, 10, 11]  # (chosen, rejected) pairs
    want, want_m = _full_batch(ex, idx, refs, loss_fn)
    for mb in (2, 4, 6, 10):
        model = _model()
        got = accumulate_gradients(model, ex, idx, loss_fn, mb, PAD, _by_group(refs), pairwise=True)
        assert torch.allclose(_grad(model), want, rtol=0, atol=1e-10), mb
        assert got["loss"] == pytest.approx(want_m["loss"], rel=1e-11)
    # data-parallel: two ranks' pair slices (3 pairs and 2) add up to the same gradient
    total = None
    for rank in (0, 1):
        model = _model()
        accumulate_gradients(
            model, ex, idx, loss_fn, 2, PAD, _by_group(refs), pairwise=True, shard=(rank, 2)
        )
        total = _grad(model) if total is None else total + _grad(model)
    assert torch.allclose(total, want, rtol=0, atol=1e-10)


def test_each_reference_sample_counts_once_with_the_first_sample_of_its_prompt():
    """π_ref samples ride with the micro-batch holding their prompt's first sample: with
    one sample per micro-batch, exactly those micro-batches carry them."""
    ex, refs = _data(n_prompts=3, K=3, n_ref=2)
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=1.0)
    idx = [4, 0, 5, 1, 8, 3, 2, 7, 6]  # groups 1 0 1 0 2 1 0 2 2
    ref_rows = []

    def spy(batch, num_samples=None, num_ref_samples=None):
        ref_rows.append(batch.num_ref_rows)
        assert (num_samples, num_ref_samples) == (9, 6)  # the global counts, every time
        return loss_fn(batch, num_samples, num_ref_samples)

    spy.needs_ref_samples = True
    accumulate_gradients(_model(), ex, idx, spy, 1, PAD, _by_group(refs))
    assert ref_rows == [2, 2, 0, 0, 2, 0, 0, 0, 0]


def test_lockstep_ranks_run_rank_zeros_passes_and_their_sum_is_the_full_gradient():
    """16 samples on 3 ranks (6, 5, 5): with one sample per micro-batch every rank runs 6
    backward passes; a micro-batch without π_ref samples runs a zero-weighted padding
    forward; the ranks' gradients add up to the full-batch gradient."""
    ex, refs = _data()
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=0.5)
    idx = list(range(16))
    want, want_m = _full_batch(ex, idx, refs, loss_fn)
    for mb, passes in ((1, 6), (2, 3), (4, 2)):
        total, loss_sum = None, 0.0
        for rank in range(3):
            model = _model()
            calls = []

            def backward(loss, calls=calls):
                calls.append(float(loss.detach()))
                loss.backward()

            m = accumulate_gradients(
                model, ex, idx, loss_fn, mb, PAD, _by_group(refs), shard=(rank, 3),
                lockstep=True, backward=backward,
            )  # fmt: skip
            assert len(calls) == passes, (mb, rank)
            loss_sum += m["loss"]
            total = _grad(model) if total is None else total + _grad(model)
        assert torch.allclose(total, want, rtol=0, atol=1e-10), mb
        assert loss_sum == pytest.approx(want_m["loss"], rel=1e-11)


def test_lockstep_padding_pass_adds_exactly_zero():
    """Rank 1 of 2 holds prompts 2 and 3; its micro-batch [14, 15] has no π_ref samples and
    runs the padding forward: the gradient is the same as without lockstep, bit for bit."""
    ex, refs = _data()
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=0.5)
    idx = list(range(16))
    grads = []
    for lockstep in (False, True):
        model = _model()
        n = []
        accumulate_gradients(
            model, ex, idx, loss_fn, 3, PAD, _by_group(refs), shard=(1, 2), lockstep=lockstep,
            backward=lambda loss, n=n: (n.append(1), loss.backward()),
        )  # fmt: skip
        assert len(n) == 3
        grads.append(_grad(model))
    assert torch.equal(grads[0], grads[1])


def test_train_policy_counts_steps_over_epochs():
    """10 samples, batch 4, 2 epochs: ceil(10/4) = 3 optimizer steps per epoch, numbered
    1..6 for ``on_step`` and the logged rows; each epoch visits every sample once."""
    ex, _ = _data(n_prompts=5, K=2)
    loss_fn = RSPOLoss(eta=4.0, regularizer="reverse_kl", coef=0.1)
    cfg = TrainingConfig(lr=1e-3, epochs=2, batch_size=4, micro_batch_size=3)
    seen, logged = [], []
    out = train_policy(_model(), ex, loss_fn, cfg, 0, PAD, log=logged.append, on_step=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in logged] == seen and out["step"] == 6
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in logged)


def _forwards(model, masks=None):
    """The number of sequences of each forward pass of ``model``, in order; with a list
    ``masks``, each pass's attention-mask rank goes there too (4 = packed, 2 = padded)."""
    sizes = []

    def hook(mod, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        sizes.append(int(ids.shape[0]))
        if masks is not None:
            masks.append(kwargs["attention_mask"].dim())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return sizes


def test_forward_passes_are_the_micro_batches_and_their_reference_samples():
    """Unpacked, no lockstep: one forward of a micro-batch's policy samples, then one of
    its π_ref samples when it holds them; no padding forward and no π_ref sample forwarded
    with the policy samples. idx 0..7 = prompts 0 and 1 (4 samples each), micro-batches of 2:
    the first micro-batch of each prompt carries its 2 π_ref samples."""
    ex, refs = _data()
    model = _model()
    sizes = _forwards(model)
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=0.5)
    accumulate_gradients(model, ex, list(range(8)), loss_fn, 2, PAD, _by_group(refs))
    assert sizes == [2, 2, 2, 2, 2, 2]  # [0,1]+refs(0), [2,3], [4,5]+refs(1), [6,7]
    # a loss without π_ref samples forwards the policy samples only, π_ref ones never
    model = _model()
    sizes = _forwards(model)
    loss_fn = RSPOLoss(eta=4.0, regularizer="reverse_kl", coef=0.5)
    accumulate_gradients(model, ex, list(range(8)), loss_fn, 3, PAD, _by_group(refs))
    assert sizes == [3, 3, 2]


def test_lockstep_pads_with_one_one_token_forward_per_missing_pass():
    """16 samples on 3 ranks (6, 5, 5), one sample per micro-batch, a loss without π_ref
    samples: rank 2 runs its 5 samples, then ONE padding forward (one row) for rank 0's
    sixth pass; no padding forward beside a real micro-batch."""
    ex, refs = _data()
    loss_fn = RSPOLoss(eta=4.0, regularizer="reverse_kl", coef=0.5)
    model = _model()
    sizes = _forwards(model)
    n = []
    accumulate_gradients(
        model, ex, list(range(16)), loss_fn, 1, PAD, _by_group(refs), shard=(2, 3),
        lockstep=True, backward=lambda loss: (n.append(1), loss.backward()),
    )  # fmt: skip
    assert (sizes, len(n)) == ([1] * 6, 6)
    # with π_ref samples (unpacked) each padding pass stands for the policy AND the π_ref
    # forward of rank 0's pass: two one-row forwards, one backward
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=0.5)
    model = _model()
    sizes = _forwards(model)
    n.clear()
    accumulate_gradients(
        model, ex, list(range(16)), loss_fn, 1, PAD, _by_group(refs), shard=(2, 3),
        lockstep=True, backward=lambda loss: (n.append(1), loss.backward()),
    )  # fmt: skip
    # rank 2 holds idx 11..15: 11 is prompt 2's (its first sample, 8, is rank 1's), 12 is
    # prompt 3's first and carries its 2 π_ref samples; a micro-batch without π_ref samples
    # adds a one-row padding forward (the π_ref forward of the other ranks), and the padding
    # pass is two one-row forwards
    assert len(n) == 6
    assert sizes == [1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on CPU every device is")
def test_accumulation_keeps_the_batch_on_the_models_device():
    """The batch's constant tensors (log π_t, log π_ref, win rates) go to the model's device:
    a GPU model accumulates the same gradient as on the CPU."""
    ex, refs = _data()
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=0.5)
    idx = list(range(12))
    want, _ = _full_batch(ex, idx, refs, loss_fn)
    model = _model().cuda()
    accumulate_gradients(model, ex, idx, loss_fn, 5, PAD, _by_group(refs))
    assert torch.allclose(_grad(model).cpu(), want, rtol=0, atol=1e-9)


def test_the_batch_constants_are_made_on_the_models_device_not_torchs_default():
    """A model on another device than torch's default (the meta device stands in for a GPU
    on a CPU-only machine): log π_t, log π_ref, the win rates, the labels and π_ref's log π_ref
    are made on the model's device, beside its log π_θ (mixed devices fail on a GPU)."""
    from types import SimpleNamespace

    class MetaLM(torch.nn.Module):  # logits = an embedding of the ids, on the meta device
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(TOK), len(TOK), device="meta", dtype=torch.float64)

        def forward(self, input_ids, attention_mask):
            return SimpleNamespace(logits=self.emb(input_ids))

    seen = []

    class Spy:  # a loss that records where its batch lives (meta tensors hold no values)
        needs_ref_samples = True

        def __call__(self, batch, num_samples, num_ref_samples):
            parts = (batch.logp_theta, batch.logp_t, batch.logp_ref, batch.win_rate,
                     batch.label, batch.ref_logp_theta, batch.ref_logp_ref)  # fmt: skip
            seen.append([(p.device.type, p.dtype, len(p)) for p in parts])
            return batch.logp_theta.sum(), {}

    ex, refs = _data()
    done = []
    accumulate_gradients(
        MetaLM(), ex, list(range(8)), Spy(), 4, PAD, _by_group(refs), pairwise=True,
        backward=lambda loss: done.append(loss.device.type),
    )  # fmt: skip
    # samples 0-3 are prompt 0's, 4-7 prompt 1's, 2 π_ref samples each: micro-batches of 4
    want = [("meta", torch.float64, 4)] * 5 + [("meta", torch.float64, 2)] * 2
    assert seen == [want, want] and done == ["meta", "meta"]


@pytest.mark.parametrize("spec", ["forward_kl[nll]", "0.5*forward_kl[nll] + 0.5*reverse_kl[k2]"])
def test_packed_accumulation_with_reference_samples_is_the_full_batch_gradient(spec):
    """Packed, a loss with π_ref samples: each micro-batch's policy samples AND its π_ref
    samples go through one packed forward, the first ``len(ex)`` rows being the policy's log
    π_θ and the rest the π_ref samples'. The accumulated gradient and the loss terms are the
    unpacked full-batch reference's for every micro-batch size (π_ref samples riding with
    micro-batches 1, 2 or more at a time). Packing agrees with the padded forward up to
    rounding (in float64 its backward differs by ~1e-7 relative), far tighter than what a
    π_ref row taken for a policy row (or the policy rows dropped) would change."""
    ex, refs = _data()
    loss_fn = RSPOLoss(eta=4.0, regularizer=spec, coef=0.7)
    idx = [3, 0, 9, 4, 13, 1, 8, 14, 6, 11, 2, 15, 5, 7]
    want, want_m = _full_batch(ex, idx, refs, loss_fn)
    for mb in (1, 2, 3, 14):
        model = _model()
        got_m = accumulate_gradients(
            model, ex, idx, loss_fn, mb, PAD, _by_group(refs), packing=True
        )
        assert torch.allclose(_grad(model), want, rtol=0, atol=1e-5), mb
        for k in ("loss", "selfplay_loss", "reg", "logratio_mean", "ref_logratio_mean"):
            assert got_m[k] == pytest.approx(want_m[k], rel=1e-9, abs=1e-11), (mb, k)


def test_packed_accumulation_runs_one_forward_per_micro_batch_with_its_reference_samples():
    """Packed: the π_ref samples are packed with the policy samples, so a micro-batch is ONE
    forward whether or not it carries π_ref samples (no separate π_ref forward). idx 0..7 =
    prompts 0 and 1, micro-batches of 2: 4 micro-batches, 4 forwards; the unpacked path runs
    6 (test_forward_passes_are_the_micro_batches_and_their_reference_samples)."""
    ex, refs = _data()
    model = _model()
    masks = []
    sizes = _forwards(model, masks)
    loss_fn = RSPOLoss(eta=4.0, regularizer="forward_kl[nll]", coef=0.5)
    seen = []

    def spy(batch, num_samples=None, num_ref_samples=None):
        seen.append((batch.num_rows, batch.num_ref_rows))
        return loss_fn(batch, num_samples, num_ref_samples)

    spy.needs_ref_samples = True
    accumulate_gradients(model, ex, list(range(8)), spy, 2, PAD, _by_group(refs), packing=True)
    assert len(sizes) == 4
    # and each is packed (a 4-D mask), not the same sequences padded: packing=True reaches
    # sequence_logprobs with the pad id in its place
    assert masks == [4, 4, 4, 4]
    # the micro-batches holding a prompt's first sample carry its 2 π_ref samples
    assert seen == [(2, 2), (2, 0), (2, 2), (2, 0)]


@pytest.mark.parametrize("loss_type", ["sppo_hard", "inpo"])
def test_pair_labels_decide_the_chosen_row_whatever_the_row_order(loss_type):
    """Pairs given rejected-first ((7, 6): labels −1, +1) are the same pairs as chosen-first
    ((6, 7)): the labels pick the chosen row, so the gradients are equal; and the swap does
    matter to the loss (rejected-first without labels would be the opposite preference)."""
    ex, refs = _data()
    tau = 0.05 if loss_type == "inpo" else None
    loss_fn = RSPOLoss(eta=4.0, regularizer=None, coef=0.0, loss_type=loss_type, tau=tau)
    assert [ex[i].label for i in (7, 6, 1, 0)] == [-1, 1, -1, 1]
    grads = []
    for idx in ([6, 7, 0, 1], [7, 6, 1, 0]):
        model = _model()
        accumulate_gradients(model, ex, idx, loss_fn, 2, PAD, pairwise=True)
        grads.append(_grad(model))
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12)
    flipped = [
        TrainExample(e.prompt_ids, e.response_ids, e.win_rate, e.logp_t, e.logp_ref, e.group,
                     -e.label)
        for e in ex
    ]  # fmt: skip
    model = _model()
    accumulate_gradients(model, flipped, [6, 7, 0, 1], loss_fn, 2, PAD, pairwise=True)
    assert not torch.allclose(_grad(model), grads[0], rtol=0, atol=1e-6)
