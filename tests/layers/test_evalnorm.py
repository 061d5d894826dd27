"""EvalNorm (shared/papers/evalnorm.txt, eqs 3-9) in detgn's BN layer, and PreciseBN / offline fitting."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detgn.modeling.precise_bn import precise_bn
from detgn.study.norm_calibration import calibrate_evalnorm
from detgn.layers import BatchNorm2d, Norm, apply_evalnorm_rule, configure_evalnorm, evalnorm, pop_evalnorm_loss
from detgn.layers.batch_norm import evalnorm_moments, sample_moments


def _varied_batch(n=8, c=6, h=5, w=7, seed=0, dtype=torch.float64):
    """Samples whose own statistics differ a lot (per-sample gain and offset per channel)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    gain = 0.3 + 2 * torch.rand(n, c, 1, 1, generator=g, dtype=dtype)
    shift = 3 * torch.randn(n, c, 1, 1, generator=g, dtype=dtype)
    return x * gain + shift


@pytest.mark.parametrize("batch", [2, 3, 8])
def test_decomposition_of_batch_statistics(batch):
    """Eqs 3-4: with alpha = beta = 1/B and the other B-1 samples' statistics, the batch's exactly."""
    x = _varied_batch(n=batch)
    var_b, mu_b = torch.var_mean(x, dim=(0, 2, 3), correction=0)
    mu_i, var_i = sample_moments(x)
    for i in range(batch):
        others = torch.cat([x[:i], x[i + 1:]])
        var_c, mu_c = torch.var_mean(others, dim=(0, 2, 3), correction=0)
        a = 1.0 / batch
        mu, var = evalnorm_moments(mu_i[i:i + 1], var_i[i:i + 1], mu_c, var_c, a, a)
        torch.testing.assert_close(mu[0], mu_b, rtol=0, atol=1e-6)
        torch.testing.assert_close(var[0], var_b, rtol=0, atol=1e-6)


def test_limits_plain_bn_and_instance_norm():
    x = _varied_batch(dtype=torch.float32)
    c = x.shape[1]
    g = torch.Generator().manual_seed(1)
    rm, rv = torch.randn(c, generator=g), 0.5 + torch.rand(c, generator=g)
    w, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    plain = F.batch_norm(x, rm, rv, w, b, training=False, eps=1e-5)
    torch.testing.assert_close(evalnorm(x, rm, rv, w, b, 0.0, 0.0, 1e-5), plain, rtol=1e-5, atol=1e-5)
    inst = F.instance_norm(x, weight=w, bias=b, eps=1e-5)
    torch.testing.assert_close(evalnorm(x, rm, rv, w, b, 1.0, 1.0, 1e-5), inst, rtol=1e-5, atol=1e-5)


def _trained_layer(batch=4, steps=30, c=6):
    torch.manual_seed(0)
    layer = BatchNorm2d(c)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    for s in range(steps):
        layer(_varied_batch(n=batch, c=c, seed=100 + s, dtype=torch.float32))
    return layer


def test_layer_records_batch_and_uses_biased_running_variance():
    layer = _trained_layer(batch=4)
    assert float(layer.train_batch_size) == 4 and float(layer.train_numel) == 4 * 5 * 7
    x = _varied_batch(n=3, c=6, seed=7, dtype=torch.float32)
    layer.eval()
    configure_evalnorm(layer, enabled=True, mode="offline")
    n = 4 * 5 * 7
    biased = layer.running_var * (n - 1) / n
    expected = F.batch_norm(x, layer.running_mean, biased, layer.weight, layer.bias, training=False, eps=layer.eps)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)  # alpha = beta = 0
    configure_evalnorm(layer, enabled=False)
    torch.testing.assert_close(layer(x), F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight,
                                                      layer.bias, training=False, eps=layer.eps))


def test_eval_output_does_not_depend_on_batch_mates():
    layer = _trained_layer()
    configure_evalnorm(layer, enabled=True, mode="offline")
    with torch.no_grad():
        layer.evalnorm_alpha.fill_(0.4)
        layer.evalnorm_beta.fill_(0.7)
    layer.eval()
    x = _varied_batch(n=5, c=6, seed=3, dtype=torch.float32)
    alone = torch.cat([layer(x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(layer(x), alone, rtol=0, atol=1e-6)
    other = torch.cat([x[:1], 10 * _varied_batch(n=4, c=6, seed=9, dtype=torch.float32)])
    torch.testing.assert_close(layer(other)[:1], layer(x)[:1], rtol=0, atol=1e-6)


def test_rule_uses_recorded_batch():
    layer = _trained_layer(batch=4)
    configure_evalnorm(layer, enabled=True, mode="rule")
    a, b = layer.evalnorm_weights()
    assert float(a) == float(b) == 1 / 16
    configure_evalnorm(layer, enabled=True, mode="offline")
    assert apply_evalnorm_rule(layer) == 1 and float(layer.evalnorm_alpha) == 1 / 16


class _Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> pool -> fc, returning a loss dict like the meta-archs."""

    def __init__(self, norm="BN"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = Norm(norm)(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = Norm(norm)(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, batch):
        x, y = batch
        z = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        logits = self.fc(z.mean((2, 3)))
        if not self.training:
            return logits
        losses = {"loss_cls": F.cross_entropy(logits, y)}
        extra = pop_evalnorm_loss(self)
        if extra is not None:
            losses["loss_evalnorm"] = extra
        return losses


def _data(batch, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, 3, 8, 8, generator=g) * (0.2 + 2 * torch.rand(batch, 1, 1, 1, generator=g))
        out.append((x + 2 * torch.randn(batch, 1, 1, 1, generator=g), torch.randint(0, 4, (batch,), generator=g)))
    return out


def test_online_fitting_leaves_training_bit_identical():
    """Same seed with and without online EvalNorm: identical losses, parameters and buffers
    (with gradient clipping and momentum on), only alpha/beta differ."""
    from detgn.engine.trainer import Trainer
    from detgn.solver.build import get_param_groups

    def run(online):
        torch.manual_seed(0)
        net = _Net()
        configure_evalnorm(net, enabled=online, mode="online")
        groups = get_param_groups(net, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0, weight_decay_bias=1e-4)
        opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        trainer = Trainer(model=net, optimizer=opt, data_loader_fn=lambda s: iter(_data(2, 25)), max_iter=25,
                          grad_clip=0.5)
        history = []
        orig = trainer.run_step

        def step():
            orig()
            history.append(trainer.storage.latest()["loss_cls"])
        trainer.run_step = step
        trainer.train()
        return net, history

    plain, h0 = run(False)
    fitted, h1 = run(True)
    assert h0 == h1
    s0, s1 = plain.state_dict(), fitted.state_dict()
    assert set(s0) == set(s1)
    for k in s0:
        if "evalnorm_" in k:
            continue
        assert torch.equal(s0[k], s1[k]), k
    assert float(fitted.bn1.evalnorm_alpha.detach()) > 0 and float(fitted.bn1.evalnorm_beta.detach()) > 0
    assert float(plain.bn1.evalnorm_alpha) == 0


def test_batch_of_one_drives_alpha_beta_to_one():
    """B = 1: training normalises each sample by itself (InstanceNorm), so the fit goes to 1."""
    torch.manual_seed(0)
    net = _Net()
    for batch in _data(1, 40):  # records B = 1 and running statistics
        net(batch)
    net.eval()
    fitted = calibrate_evalnorm(net, _data(1, 150, seed=5), num_iter=150, lr=0.05, log_period=0)
    for name, (a, b) in fitted.items():
        assert a > 0.95 and b > 0.95, (name, a, b)


def test_offline_calibration_changes_only_alpha_beta():
    torch.manual_seed(0)
    net = _Net()
    for batch in _data(4, 30):
        net(batch)
    before = copy.deepcopy(net.state_dict())
    rng = torch.get_rng_state()
    fitted = calibrate_evalnorm(net, _data(4, 60, seed=3), num_iter=60, lr=0.05, log_period=0)
    assert torch.equal(torch.get_rng_state(), rng)
    after = net.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed and all(k.endswith(("evalnorm_alpha", "evalnorm_beta")) for k in changed), changed
    assert all(0 <= a < 1 and 0 <= b < 1 for a, b in fitted.values()), fitted  # B = 4: below InstanceNorm
    assert fitted["bn1"][0] > 0 and fitted["bn1"][1] > 0, fitted  # the input's per-sample shifts: above plain BN
    assert all(not p.requires_grad or "evalnorm" not in n for n, p in net.named_parameters())
    assert {n for n, _ in net.named_parameters()} == {n for n, _ in _Net().named_parameters()}


def test_precise_bn_equals_pooled_statistics():
    """On fixed batches: the mean and (unbiased) variance of every value each layer saw."""
    torch.manual_seed(0)
    net = _Net()
    batches = _data(2, 12, seed=11)
    for batch in _data(2, 20):
        net(batch)
    inputs = {"bn1": [], "bn2": []}
    hooks = [getattr(net, k).register_forward_pre_hook(lambda m, i, k=k: inputs[k].append(i[0].detach().clone()))
             for k in inputs]
    with torch.no_grad():
        for batch in batches:  # what the layers see in training mode (batch statistics)
            net(batch)
    for h in hooks:
        h.remove()
    recorded = float(net.bn1.train_batch_size), int(net.bn1.num_batches_tracked)
    ref = {k: torch.var_mean(torch.cat(v).double(), dim=(0, 2, 3), correction=1) for k, v in inputs.items()}
    used = precise_bn(net, batches, num_iter=12, log_period=0)
    assert used == 12
    for k, (var, mean) in ref.items():
        layer = getattr(net, k)
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)
    assert (float(net.bn1.train_batch_size), int(net.bn1.num_batches_tracked)) == recorded


def test_syncbn_and_frozen_bn_untouched():
    from detgn.layers import FrozenBatchNorm2d, SyncBatchNorm2d

    model = nn.Sequential(SyncBatchNorm2d(4), FrozenBatchNorm2d(4))
    assert configure_evalnorm(model, enabled=True, mode="online") == 0
    before = copy.deepcopy(model.state_dict())
    assert precise_bn(model, [torch.randn(2, 4, 3, 3)], num_iter=1, log_period=0) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (0.3, 0.6), (1.0, 1.0), (0.7, 0.2)])
def test_aux_loss_and_its_closed_form_gradients_match_autograd(alpha, beta):
    """The online/offline loss (eq. 9) and its alpha/beta gradients against a direct autograd computation."""
    from detgn.layers.batch_norm import evalnorm_aux_loss as _evalnorm_aux_loss, normalize_per_sample as _normalize

    x = _varied_batch(n=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    mu_e, var_e = torch.randn(6, generator=g, dtype=torch.float64), 0.5 + torch.rand(6, generator=g, dtype=torch.float64)
    eps = 1e-5

    def reference(a, b):
        mu_i, var_i = sample_moments(x)
        var_b, mu_b = torch.var_mean(x, dim=(0, 2, 3), correction=0)
        target = (x - mu_b.view(1, -1, 1, 1)) / (var_b.view(1, -1, 1, 1) + eps).sqrt()
        mu_hat, var_hat = evalnorm_moments(mu_i, var_i, mu_e, var_e, a, b)
        return (target - _normalize(x, mu_hat, var_hat, eps)).abs().mean()

    a1, b1 = torch.tensor(alpha, dtype=torch.float64, requires_grad=True), torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    a2, b2 = torch.tensor(alpha, dtype=torch.float64, requires_grad=True), torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    ref, got = reference(a1, b1), _evalnorm_aux_loss(x, mu_e, var_e, a2, b2, eps)
    ref.backward()
    got.backward()
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a2.grad, a1.grad, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(b2.grad, b1.grad, rtol=1e-7, atol=1e-12)


def test_online_loss_stays_finite_on_1x1_maps_with_nearly_equal_samples():
    """At 2 images per batch a 1x1 map (a ResNet's last stage on 32-px inputs) gives per-sample
    variances of 0 and a batch variance that is the tiny spread of two large, nearly equal
    means; the online loss must stay finite there (the one-pass E[x^2] - E[x]^2 went negative)."""
    layer = BatchNorm2d(8)
    configure_evalnorm(layer, enabled=True, mode="online")
    layer.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.running_mean.fill_(300.0)
    for spread in (0.0, 1e-4, 1e-3):
        x = 300.0 + spread * torch.randn(2, 8, 1, 1, generator=g)
        layer(x)
        loss = pop_evalnorm_loss(layer)
        assert torch.isfinite(loss), (spread, loss)
        loss.backward()
        assert torch.isfinite(layer.evalnorm_alpha.grad) and torch.isfinite(layer.evalnorm_beta.grad)
