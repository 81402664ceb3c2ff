"""Learning-rate schedules (values, composition, per-epoch vs per-step in fit; torch's
lr_scheduler as a cross-check when installed) and early stopping with best-weights restore."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gpunet as gn
from gpunet.optim import SGD
from gpunet.schedules import (CosineDecay, EarlyStopping, ExponentialDecay, LinearWarmup, StepDecay,
                              as_schedule)


# ---- values ------------------------------------------------------------------------------------
def test_step_and_exponential_values():
    s = StepDecay(step_size=3, gamma=0.5)
    assert [s.factor(t, None) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    e = ExponentialDecay(0.9)
    assert e.lr(0.1, 2) == pytest.approx(0.1 * 0.81)


def test_cosine_values_and_horizon_from_fit():
    c = CosineDecay(total=10, min_factor=0.1)
    assert c.factor(0, None) == 1.0
    assert c.factor(5, None) == pytest.approx(0.55)
    assert c.factor(10, None) == pytest.approx(0.1) and c.factor(50, None) == pytest.approx(0.1)
    open_ended = CosineDecay()
    assert open_ended.factor(4, 8) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="total"):
        open_ended.factor(1, None)


def test_warmup_then_cosine():
    s = LinearWarmup(4, start_factor=0.0, then=CosineDecay())
    total = 12
    factors = [s.factor(t, total) for t in range(total)]
    assert factors[:4] == [0.0, 0.25, 0.5, 0.75]
    assert factors[4] == 1.0                              # the cosine starts at its top
    assert factors[8] == pytest.approx(0.5)               # halfway through the 8 that are left
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))
    assert LinearWarmup(2).factor(7, None) == 1.0


@pytest.mark.parametrize("make,error,words", [
    (lambda: StepDecay(0), ValueError, "step_size"),
    (lambda: StepDecay(2, gamma=1.5), ValueError, "gamma"),
    (lambda: ExponentialDecay(0.0), ValueError, "gamma"),
    (lambda: CosineDecay(min_factor=2), ValueError, "min_factor"),
    (lambda: CosineDecay(per="batch"), ValueError, "per"),
    (lambda: LinearWarmup(0), ValueError, "warmup"),
    (lambda: LinearWarmup(3, then="cosine"), TypeError, "Schedule"),
    (lambda: LinearWarmup(3, then=CosineDecay(per="step")), ValueError, "per"),
    (lambda: as_schedule(0.5), TypeError, "schedule"),
    (lambda: EarlyStopping(patience=-1), ValueError, "patience"),
    (lambda: EarlyStopping(mode="up"), ValueError, "mode"),
    (lambda: EarlyStopping(monitor=3), TypeError, "monitor"),
])
def test_bad_settings_are_refused(make, error, words):
    with pytest.raises(error, match=words):
        make()


@pytest.mark.parametrize("name", ["step", "exponential", "cosine", "warmup"])
def test_factors_agree_with_torch_lr_scheduler(name):
    torch = pytest.importorskip("torch")
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=0.5)
    sched = torch.optim.lr_scheduler
    if name == "step":
        ours, theirs = StepDecay(3, gamma=0.3), sched.StepLR(opt, step_size=3, gamma=0.3)
    elif name == "exponential":
        ours, theirs = ExponentialDecay(0.8), sched.ExponentialLR(opt, gamma=0.8)
    elif name == "cosine":
        ours, theirs = CosineDecay(total=7, min_factor=0.2), sched.CosineAnnealingLR(opt, T_max=7, eta_min=0.1)
    else:
        ours, theirs = LinearWarmup(5, start_factor=0.25), sched.LinearLR(opt, start_factor=0.25, total_iters=5)
    # past T_max torch's cosine climbs again (it is periodic); ours stays at the floor
    for t in range(8 if name == "cosine" else 12):
        assert ours.lr(0.5, t, None) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), t
        opt.step()
        theirs.step()


# ---- in fit ---------------------------------------------------------------------------------------
class RecordingSGD(SGD):
    """SGD that remembers the lr of every step it was asked to take."""

    def __init__(self, lr):
        super().__init__(lr=lr)
        self.seen = []

    def step(self, backend, params, grads, *, lr=None, **kwargs):
        self.seen.append(self.lr if lr is None else lr)
        super().step(backend, params, grads, lr=lr, **kwargs)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, (X[:, 0] > 0).astype(int)


def test_per_epoch_schedule_in_fit():
    X, y = _data()
    opt = RecordingSGD(lr=0.2)
    net = gn.MLP([3, 4, 2], seed=0)
    h = net.fit(X, y, epochs=4, batch_size=10, optimizer=opt, schedule=StepDecay(2, gamma=0.5), progress=False)
    assert opt.seen == [0.2] * 8 + [0.1] * 8
    assert h["lr"] == [0.2, 0.2, 0.1, 0.1]
    assert opt.lr == 0.2                    # the schedule never rewrites the base lr


def test_per_step_schedule_in_fit_counts_steps_over_epochs():
    X, y = _data(n=35)                      # 4 steps per epoch, the last one short
    opt = RecordingSGD(lr=1.0)
    net = gn.MLP([3, 4, 2], seed=0)
    sched = LinearWarmup(3, start_factor=0.0, then=CosineDecay(per="step"), per="step")
    h = net.fit(X, y, epochs=3, batch_size=10, optimizer=opt, schedule=sched, progress=False)
    expected = [sched.lr(1.0, t, 12) for t in range(12)]
    assert opt.seen == pytest.approx(expected)
    assert opt.seen[:3] == [0.0, pytest.approx(1 / 3), pytest.approx(2 / 3)] and opt.seen[3] == 1.0
    assert h["lr"] == pytest.approx([expected[3], expected[7], expected[11]])


def test_callable_schedule_and_named_optimizer():
    X, y = _data()
    net = gn.MLP([3, 4, 2], seed=0)
    h = net.fit(X, y, epochs=3, optimizer="adam", lr=0.01, schedule=lambda epoch: 1.0 / (1 + epoch), progress=False)
    assert h["lr"] == pytest.approx([0.01, 0.005, 0.01 / 3])


def test_schedule_factor_must_be_a_non_negative_number():
    X, y = _data()
    net = gn.MLP([3, 4, 2], seed=0)
    with pytest.raises(ValueError, match="schedule factor"):
        net.fit(X, y, epochs=2, schedule=lambda epoch: -1.0, progress=False)


def test_no_schedule_records_constant_lr():
    X, y = _data()
    h = gn.MLP([3, 4, 2], seed=0).fit(X, y, epochs=3, lr=0.03, progress=False)
    assert h["lr"] == [0.03] * 3 and not h.stopped_early


# ---- early stopping -----------------------------------------------------------------------------
def test_early_stopping_rules():
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1)
    assert es.minimize
    assert es.update(1, 1.0) and not es.should_stop
    assert not es.update(2, 0.95)           # better, but not by min_delta
    assert not es.should_stop
    assert not es.update(3, float("nan"))
    assert es.should_stop and es.best_epoch == 1
    es.reset()
    assert es.best_value is None and es.wait == 0
    mx = EarlyStopping(monitor="val_accuracy", patience=0)
    assert not mx.minimize
    assert mx.update(1, 0.5) and not mx.should_stop
    assert not mx.update(2, 0.5) and mx.should_stop
    assert EarlyStopping(monitor="val_accuracy", mode="min").minimize


def test_early_stopping_stops_and_restores_the_best_epoch():
    """Monitoring the training loss with mode='max' makes epoch 1 the best for sure: training
    must stop after ``patience`` more epochs and hand back the parameters of epoch 1."""
    X, y = _data(n=64)
    net = gn.MLP([3, 8, 2], seed=3)
    h = net.fit(X, y, epochs=20, batch_size=16, lr=0.1, progress=False,
                early_stopping=EarlyStopping(monitor="loss", mode="max", patience=2))
    assert h.stopped_early and h.stopped_epoch == 3 and h.best_epoch == 1 and h.epochs == 3
    twin = gn.MLP([3, 8, 2], seed=3)           # same seed: same init and same shuffles
    twin.fit(X, y, epochs=1, batch_size=16, lr=0.1, progress=False)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))


def test_early_stopping_without_restore_keeps_the_last_epoch():
    X, y = _data(n=64)
    net = gn.MLP([3, 8, 2], seed=3)
    net.fit(X, y, epochs=20, batch_size=16, lr=0.1, progress=False,
            early_stopping=EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=False))
    twin = gn.MLP([3, 8, 2], seed=3)
    twin.fit(X, y, epochs=3, batch_size=16, lr=0.1, progress=False)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), gn.to_numpy(twin.flat_params))


def test_early_stopping_on_validation_accuracy(backend):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(400, 10))
    y = (X[:, :3].sum(axis=1) > 0).astype(int)
    net = gn.MLP([10, 32, 2], seed=0)
    h = net.fit(X[:300], y[:300], epochs=200, batch_size=32, lr=0.05, momentum=0.9, progress=False,
                validation_data=(X[300:], y[300:]),
                early_stopping=EarlyStopping(monitor="val_accuracy", patience=5))
    assert h.stopped_early and h.epochs < 200
    assert h.best_value == max(h["val_accuracy"])
    assert h["val_accuracy"][h.best_epoch - 1] == h.best_value
    assert net.score(X[300:], y[300:]) == pytest.approx(h.best_value)


def test_early_stopping_monitor_is_checked_before_training():
    X, y = _data()
    net = gn.MLP([3, 4, 2], seed=0)
    before = gn.to_numpy(net.flat_params).copy()
    with pytest.raises(ValueError, match="validation_data"):
        net.fit(X, y, early_stopping=True, progress=False)
    with pytest.raises(ValueError, match="r2"):
        net.fit(X, y, early_stopping=EarlyStopping(monitor="r2"), progress=False)
    with pytest.raises(TypeError, match="early_stopping"):
        net.fit(X, y, early_stopping="yes", progress=False)
    np.testing.assert_array_equal(gn.to_numpy(net.flat_params), before)


def test_early_stopping_true_uses_val_loss_for_a_regressor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = np.sin(X[:, :1])
    net = gn.MLP([2, 16, 1], output="identity", loss="mse", seed=0)
    h = net.fit(X[:90], y[:90], epochs=300, lr=0.05, progress=False, validation_data=(X[90:], y[90:]),
                early_stopping=True)
    assert h.best_value == pytest.approx(min(h["val_loss"]))
    assert math.isfinite(h["val_r2"][-1])
