"""Transforms tested against the meaning they claim, not against another path that shares their
inputs (see CONTRIBUTING.md, "Testing habits").

- BatchNorm folding: `fold_batch_norm` against bn(conv(x)) in float64, and a converted model in
  float arithmetic against the eval-mode float model it came from.
- Q-MUL's adaptive gradient reweighting: the per-sample weights handed to training, and the
  gradient of the first training step, against the formula w_f L_f + w_r L_r with G_f and G_r
  recomputed here.
"""

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import intunlearn
from intunlearn.models import build_model
from intunlearn.unlearning.methods import UnlearnTask, get_method
from intunlearn.unlearning.methods import qmul as qmul_module
from intunlearn.unlearning.training import TrainConfig, train

FLOAT32_UNIT_ROUNDOFF = 2.0**-24

# ---- BatchNorm folding --------------------------------------------------------------------------


def random_batch_norm(channels, *, affine, generator, eps=1e-5):
    """An eval-mode BatchNorm2d with random running statistics (variances spread over five decades,
    so a fold that uses the wrong power of the variance cannot pass by luck) and, when affine,
    random gamma (either sign) and beta."""
    bn = nn.BatchNorm2d(channels, eps=eps, affine=affine)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=generator) * 2)
        bn.running_var.copy_(10.0 ** (torch.rand(channels, generator=generator) * 5 - 3))  # 1e-3 .. 1e2
        if affine:
            bn.weight.copy_(torch.randn(channels, generator=generator) * 1.5)
            bn.bias.copy_(torch.randn(channels, generator=generator))
    return bn.eval()


def bn_factor_and_shift64(bn):
    """gamma / sqrt(var + eps) and beta in float64, from BatchNorm's definition."""
    factor = 1 / torch.sqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        factor = factor * bn.weight.detach().double()
        return factor, bn.bias.detach().double()
    return factor, torch.zeros_like(factor)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    in_channels = groups * draw(st.integers(1, 3))
    out_channels = groups * draw(st.integers(1, 4))
    kernel = draw(st.integers(1, 3))
    return dict(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel, groups=groups,
                stride=draw(st.integers(1, 2)), padding=draw(st.integers(0, kernel // 2)),
                dilation=draw(st.integers(1, 2)), bias=draw(st.booleans()))


@settings(max_examples=30, deadline=None)
@given(conv_cases(), st.booleans(), st.sampled_from([1e-5, 1e-3]), st.integers(0, 2**31 - 1))
def test_fold_batch_norm_is_bn_of_conv_in_float64(conv_kwargs, affine, eps, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    conv = nn.Conv2d(**conv_kwargs)
    bn = random_batch_norm(conv.out_channels, affine=affine, generator=generator, eps=eps)
    x = torch.randn(2, conv.in_channels, 7, 6, generator=generator, dtype=torch.float64)

    weight, bias = intunlearn.fold_batch_norm(conv, bn)

    with torch.no_grad():
        expected = copy.deepcopy(bn).double().eval()(copy.deepcopy(conv).double()(x))
    conv_args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    got = F.conv2d(x, weight.double(), bias.double(), *conv_args)
    # The fold returns float32 weight and bias: each is its float64 value times (1 + d), |d| <= u
    # (u = 2^-24). So |got - exact| <= u * (conv(|x|, |W_folded|) + |b_folded|); float64 rounding
    # in `expected` is 1e-16 relative, far below. Twice that bound leaves room for both.
    factor, shift = bn_factor_and_shift64(bn)
    conv_bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(factor)
    magnitude = (F.conv2d(x.abs(), weight.double().abs(), None, *conv_args)
                 + (factor.abs() * (conv_bias.abs() + bn.running_mean.double().abs()) + shift.abs())[:, None, None])
    error = (got - expected).abs()
    bound = 2 * FLOAT32_UNIT_ROUNDOFF * magnitude
    within = bool((error <= bound).all())
    assert within, (
        f"folded conv differs from bn(conv(x)) by up to {float(error.max()):.3g} "
        f"(bound {float(bound[error > bound].min()):.3g}); factor range "
        f"{float(factor.abs().min()):.3g}..{float(factor.abs().max()):.3g}")


class ConvBNNet(nn.Module):
    """conv -> BN (-> ReLU) -> conv -> BN -> ReLU -> global average pool -> linear."""

    def __init__(self, *, bias, affine, relu, groups, generator):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=bias)
        self.bn1 = random_batch_norm(4, affine=affine, generator=generator)
        self.relu1 = nn.ReLU() if relu else nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=groups, bias=bias)
        self.bn2 = random_batch_norm(6, affine=affine, generator=generator)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def magnitude64(self, x):
        """The same network on |x| with every weight, bias and BN term replaced by its absolute
        value, in float64: the sum of |terms| that bounds float32 rounding in any evaluation order."""
        def conv_bn(conv, bn, m):
            factor, shift = bn_factor_and_shift64(bn)
            bias = conv.bias.double().abs() if conv.bias is not None else 0
            y = F.conv2d(m, conv.weight.double().abs(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
            return factor.abs()[:, None, None] * (y + (bias + bn.running_mean.double().abs())[:, None, None]) \
                + shift.abs()[:, None, None]
        m = conv_bn(self.conv2, self.bn2, conv_bn(self.conv1, self.bn1, x.double().abs()))
        m = m.mean(dim=(2, 3))
        return m @ self.head.weight.double().abs().T + self.head.bias.double().abs()


@settings(max_examples=12, deadline=None)
@given(bias=st.booleans(), affine=st.booleans(), relu=st.booleans(), groups=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1))
def test_converted_model_in_float_arithmetic_is_the_eval_mode_float_model(bias, affine, relu, groups, seed):
    """quantize() folds each BN into its conv; switched to float arithmetic, the converted model
    must compute what the original computes in eval mode (its running statistics)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvBNNet(bias=bias, affine=affine, relu=relu, groups=groups, generator=generator).eval()
    calibration = torch.randn(16, 2, 6, 6, generator=generator)
    x = torch.randn(8, 2, 6, 6, generator=generator)

    converted = intunlearn.quantize(model, weight_bits=8, calibration=calibration)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules()), "BN was not folded"
    intunlearn.set_arithmetic(converted, "float")
    with torch.no_grad():
        got = converted.eval()(x)
        expected = model(x)
        magnitude = model.magnitude64(x).float()
    # Both are float32 evaluations of one real function: each is within n*u*magnitude of it, with
    # n the longest chain of roundings (<= 36 + 36 terms in the convs, a few in BN, 9 in the pool,
    # 6 in the linear: n < 100), u = 2^-24 -> 2 * 100 * 6e-8 = 1.2e-5. A fold with a wrong BN
    # factor is off by O(1) relative (variances span 1e-3..1e2).
    bound = 1.2e-5 * magnitude
    error = (got - expected).abs()
    within = bool((error <= bound).all())
    assert within, (
        f"converted model (float arithmetic) differs from the eval-mode float model by up to "
        f"{float(error.max()):.3g}; largest allowed {float(bound.max()):.3g}")


def test_converting_a_train_mode_model_folds_the_running_statistics():
    """The fold uses running statistics, not batch statistics: converting a model left in train
    mode still gives the eval-mode function, and the original is not changed."""
    generator = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = ConvBNNet(bias=True, affine=True, relu=True, groups=1, generator=generator).train()
    running_var = model.bn1.running_var.clone()
    x = torch.randn(4, 2, 6, 6, generator=generator)
    converted = intunlearn.quantize(model, calibration=x)
    intunlearn.set_arithmetic(converted, "float")
    assert torch.equal(model.bn1.running_var, running_var) and model.training
    with torch.no_grad():
        got = converted.eval()(x)
        expected = model.eval()(x)
        bound = 1.2e-5 * model.magnitude64(x).float()  # as in the property test above
    error = (got - expected).abs()
    within = bool((error <= bound).all())
    assert within, (f"converted model (float arithmetic) differs from the eval-mode float model by up to "
                    f"{float(error.max()):.3g}; largest allowed {float(bound.max()):.3g}")



# ---- Q-MUL's adaptive gradient reweighting --------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _fitted_problem():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(10)
    x = torch.rand(40, 1, 4, 4, generator=g) * 0.3
    for c in range(4):
        x[y == c, 0, (c // 2) * 2:(c // 2) * 2 + 2, (c % 2) * 2:(c % 2) * 2 + 2] += 0.7
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 4, width=16)
    train(model, x, y, TrainConfig(40, 0.05, 16), seed=0, desc="fit")
    model = intunlearn.quantize(model, weight_bits=4, calibration=x).eval()
    forget = torch.zeros(40, dtype=torch.bool)
    forget[torch.randperm(40, generator=g)[:8]] = True
    return model, x, y, forget


def qmul_problem(*, epochs, batch_size):
    """A quantized (4-bit weight, integer arithmetic) MLP fitted to 4 separable classes, and a
    random 8-of-40 forget set. Batches hold whole sets, so every gradient norm is of a full set's
    mean loss and does not depend on how a method shuffles."""
    model, x, y, forget = _fitted_problem()
    task = UnlearnTask(x[forget], y[forget], x[~forget], y[~forget], 4, "random", 0, retrain_from_scratch=None,
                       epochs=epochs, batch_size=batch_size)
    return copy.deepcopy(model), task


def mean_loss_gradients(model, x, y):
    """d mean CE / d theta for every trainable parameter, in training mode, leaving .grad alone."""
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), parameters, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads)]


def gradient_norm_sum(grads):
    """G: the sum over parameter tensors of the L2 norm of the gradient (Q-MUL's definition)."""
    return sum(float(g.double().norm()) for g in grads)


def rows_in(x, rows):
    """Which samples of x are (bit-identical to) one of `rows`."""
    return (x.flatten(1)[:, None, :] == rows.flatten(1)[None, :, :]).all(-1).any(1)


def test_qmul_hands_training_the_per_sample_weights_of_the_agr_formula(monkeypatch):
    """Every epoch, the alpha Q-MUL gives the training loop is w_f*N/N_f on forget samples and
    w_r*N/N_r on retain samples, w_f = G_r/(G_f+G_r), w_r = G_f/(G_f+G_r), with G_f and G_r
    recomputed here from the model as it is at that epoch's start and the labels handed to
    training."""
    model, task = qmul_problem(epochs=3, batch_size=64)
    real_train = qmul_module.train
    epochs_seen = []

    def spy_train(model_, x, y, config, **kwargs):
        is_forget = rows_in(x, task.x_forget)
        assert int(is_forget.sum()) == len(task.x_forget) and len(x) == len(task.x_forget) + len(task.x_retain)
        reweight = kwargs["on_epoch_start"]

        def checked_reweight(epoch):
            g_f = gradient_norm_sum(mean_loss_gradients(model_, x[is_forget], y[is_forget]))
            g_r = gradient_norm_sum(mean_loss_gradients(model_, x[~is_forget], y[~is_forget]))
            alpha = reweight(epoch)
            epochs_seen.append((epoch, g_f, g_r, is_forget, alpha.detach().clone()))
            return alpha

        kwargs["on_epoch_start"] = checked_reweight
        return real_train(model_, x, y, config, **kwargs)

    monkeypatch.setattr(qmul_module, "train", spy_train)
    get_method("qmul").unlearn(model, task)

    assert [entry[0] for entry in epochs_seen] == [0, 1, 2]
    n, n_f, n_r = len(task.x_forget) + len(task.x_retain), len(task.x_forget), len(task.x_retain)
    for epoch, g_f, g_r, is_forget, alpha in epochs_seen:
        w_f, w_r = g_r / (g_f + g_r), g_f / (g_f + g_r)
        # The relabelled forget data have a much larger gradient than the fitted retain data, so
        # the two weights differ and a swap of w_f and w_r cannot pass unnoticed.
        assert abs(w_f - w_r) > 0.2, (epoch, g_f, g_r)
        expected = torch.where(is_forget, torch.tensor(w_f * n / n_f), torch.tensor(w_r * n / n_r)).float()
        # G_f and G_r here and in the method are the same float32 gradients' norms summed in
        # float64 vs float32: they agree to ~1e-6 relative; alpha is stored in float32.
        torch.testing.assert_close(alpha.float(), expected, rtol=1e-5, atol=0,
                                   msg=lambda m: f"epoch {epoch}: alpha is not (w_f N/N_f, w_r N/N_r) "
                                                 f"for G_f={g_f:.4g}, G_r={g_r:.4g} (w_f={w_f:.4g}, "
                                                 f"w_r={w_r:.4g}):\n{m}")


def similar_labels_by_definition(probabilities, labels):
    """For each sample, the wrong class c minimising |p_c - p_label| (lowest index on ties)."""
    out = []
    for p, label in zip(probabilities.tolist(), labels.tolist()):
        wrong = [c for c in range(len(p)) if c != label]
        out.append(min(wrong, key=lambda c: (abs(p[c] - p[label]), c)))
    return torch.tensor(out)


def test_qmul_first_step_gradient_is_that_of_the_weighted_objective():
    """The meaning of the reweighting, seen where it acts: with one batch holding all N samples,
    the gradient of Q-MUL's first training step is grad(w_f L_f + w_r L_r) (L_f, L_r the mean
    losses on the relabelled forget and the retain data), computed here without per-sample
    weights. Captured from the optimizer, so no intunlearn internals are involved."""
    model, task = qmul_problem(epochs=1, batch_size=64)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        probabilities = F.softmax(reference.eval()(task.x_forget), dim=1)
    y_forget = similar_labels_by_definition(probabilities, task.y_forget)
    grads_f = mean_loss_gradients(reference, task.x_forget, y_forget)
    grads_r = mean_loss_gradients(reference, task.x_retain, task.y_retain)
    g_f, g_r = gradient_norm_sum(grads_f), gradient_norm_sum(grads_r)
    w_f, w_r = g_r / (g_f + g_r), g_f / (g_f + g_r)
    assert abs(w_f - w_r) > 0.2, (g_f, g_r)  # else swapped weights would look the same

    steps = []

    def capture(optimizer, args, kwargs):
        steps.append([None if p.grad is None else p.grad.detach().clone()
                      for group in optimizer.param_groups for p in group["params"]])

    handle = register_optimizer_step_pre_hook(capture)
    try:
        get_method("qmul").unlearn(model, task)
    finally:
        handle.remove()

    assert len(steps) == 1  # one epoch, one batch
    names = [name for name, p in reference.named_parameters() if p.requires_grad]
    assert len(steps[0]) == len(names)
    for name, got, grad_f, grad_r in zip(names, steps[0], grads_f, grads_r):
        expected = w_f * grad_f + w_r * grad_r
        # Same per-sample float32 terms, summed in another order and weighted before rather than
        # after the sum: float32 rounding, far below 1e-4 of the tensor's largest entry. A swap
        # of w_f and w_r changes it by |w_f - w_r| * |grad_f - grad_r|, O(1) of it.
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * scale + 1e-12,
                                   msg=lambda m: f"{name}: first-step gradient is not "
                                                 f"grad(w_f L_f + w_r L_r) with w_f={w_f:.4g}, "
                                                 f"w_r={w_r:.4g}:\n{m}")
