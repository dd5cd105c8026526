"""FAB-T against references written independently of it.

- The box-constrained hyperplane projections against a bisection on the one-dimensional problem
  each reduces to (the smallest L-inf or L2 step onto {z: <w, z> = b} inside [0, 1]^D).
- The attack loop against a numpy transcription of the original's `attack_single_run` and targeted
  `perturb` (github.com/fra31/auto-attack, `fab_base.py`), iterate by iterate on a small network.
- Behaviour: the minimum norm on a linear model, eps honoured, AutoAttack's place for it, the registry.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify.attacks import get_attack, resolve_params, run_attack
from tfpurify.attacks.autoattack import AutoAttack
from tfpurify.attacks.fab import fab_run, fab_targeted, projection_l2, projection_linf
from tfpurify.errors import AttackConfigError


def _problems(seed, m=24, d=40):
    """Rows of (t, w, b): hyperplanes that cut the box, miss it, or have zero weights and points on the
    box's faces (many equal coordinates, as the black background of an image)."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (m, d))
    t[: m // 3, : d // 2] = 0.0  # ties
    t[m // 3: m // 2, d // 2:] = 1.0
    w = rng.normal(size=(m, d))
    w[::5, ::3] = 0.0
    target = rng.uniform(0, 1, (m, d))  # a point of the box: the hyperplane through it cuts the box
    b = np.sum(w * target, axis=1)
    b[::4] = np.sum(np.abs(w), axis=1)[::4] * 2.0 * np.sign(rng.normal(size=m))[::4]  # out of reach
    return t, w, b


def _edge_problems(seed, d=40):
    """The rows random problems seldom make: (1) a step smaller than every coordinate's room (FAB near the
    boundary, the L-inf fast path where every coordinate moves by the same amount), and L-inf steps 0.1-10 %
    below and above the smallest room (the fast path's edge); (2) gradients of the small scale a network's
    logits have (1e-3), hyperplanes in and out of reach; (3) hyperplanes within 0.1 % of the box's furthest
    reach, inside and outside; (4) a point exactly on its hyperplane (integer weights, pixels 0, 0.5, 1)."""
    rng = np.random.default_rng(100 + seed)

    def rooms(t, w, sign):  # how far each coordinate can move <w, .> in direction `sign`
        return np.where(np.sign(w) * sign[:, None] > 0, 1.0 - t, t)

    parts = []
    t = rng.uniform(0.2, 0.8, (12, d))  # (1) every room >= 0.2, steps of 0.005-0.05; then at the edge
    w = rng.normal(size=(12, d))
    w[:, ::7] = 0.0
    t[:, ::7] = 0.9  # a coordinate that cannot move is no smaller room
    sign = np.where(rng.uniform(size=12) < 0.5, -1.0, 1.0)
    step = rng.uniform(0.005, 0.05, 12)
    room = rooms(t, w, sign)
    step[6:] = np.where(w[6:] != 0, room[6:], np.inf).min(axis=1) * np.array([0.9, 0.99, 0.999, 1.001, 1.01, 1.1])
    parts.append((t, w, np.sum(w * t, axis=1) + sign * np.sum(np.abs(w) * np.minimum(step[:, None], room), axis=1)))
    t = rng.uniform(0, 1, (6, d))  # (2)
    t[:3, : d // 2] = 0.0
    w = rng.normal(size=(6, d)) * 1e-3
    sign = np.where(np.arange(6) % 2 == 0, -1.0, 1.0)
    reach = np.sum(np.abs(w) * rooms(t, w, sign), axis=1)
    parts.append((t, w, np.sum(w * t, axis=1) + sign * reach * np.array([0.3, 0.6, 0.9, 1.5, 2.0, 0.5])))
    t = rng.uniform(0, 1, (8, d))  # (3)
    t[:4, : d // 3] = 1.0
    w = rng.normal(size=(8, d))
    sign = np.where(np.arange(8) % 2 == 0, -1.0, 1.0)  # the direction <w, .> must move
    reach = np.sum(np.abs(w) * rooms(t, w, sign), axis=1)
    parts.append((t, w, np.sum(w * t, axis=1) + sign * reach * np.where(np.arange(8) % 4 < 2, 0.999, 1.001)))
    t = rng.integers(0, 3, (4, d)) / 2.0  # (4)
    w = rng.integers(-3, 4, (4, d)).astype(float)
    parts.append((t, w, np.sum(w * t, axis=1)))
    return tuple(np.concatenate(column) for column in zip(*parts))


def _bisect(fn, low, high, steps=200):
    """The root of a non-decreasing fn on [low, high] (or the end nearest to it)."""
    for _ in range(steps):
        mid = (low + high) / 2
        if fn(mid) < 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def _linf_reference(t, w, b):
    """min s such that some d with |d_i| <= s, t + d in the box reaches <w, t + d> = b: each coordinate goes
    min(s, room_i) the way that moves <w, .> towards b; where even the whole box falls short, all the way."""
    need = b - w @ t
    direction = np.sign(need) * np.sign(w)
    room = np.where(direction > 0, 1 - t, t)
    room = np.where(w == 0, 0.0, room)

    def d_of(s):
        return direction * np.minimum(s, room)

    if abs(w @ d_of(room.max())) < abs(need):
        return d_of(room.max())
    s = _bisect(lambda s: abs(w @ d_of(s)) - abs(need), 0.0, room.max())
    return d_of(s)


def _l2_reference(t, w, b):
    """KKT of min ||d|| with <w, t + d> = b in the box: d(lam) = clip(t + lam w, 0, 1) - t for the lam that
    reaches b; where the box falls short, the box point that goes furthest."""
    def d_of(lam):
        return np.clip(t + lam * w, 0, 1) - t

    big = 1e6
    low, high = -big, big
    if w @ (t + d_of(high)) < b or w @ (t + d_of(low)) > b:
        return d_of(high if w @ (t + d_of(high)) < b else low)
    lam = _bisect(lambda lam: w @ (t + d_of(lam)) - b, low, high, steps=400)
    return d_of(lam)


@pytest.mark.parametrize("problems", [_problems, _edge_problems])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_projections_are_the_smallest_steps_onto_the_hyperplane_in_the_box(seed, norm, problems):
    t, w, b = problems(seed)
    project, reference = (projection_linf, _linf_reference) if norm == "inf" else (projection_l2, _l2_reference)
    got = project(tf.constant(t, tf.float32), tf.constant(w, tf.float32), tf.constant(b, tf.float32)).numpy()
    size = (lambda v: np.abs(v).max()) if norm == "inf" else np.linalg.norm
    reached = 0
    for i in range(len(t)):
        want = _linf_reference(t[i], w[i], b[i]) if norm == "inf" else _l2_reference(t[i], w[i], b[i])
        z = t[i] + got[i]
        assert z.min() >= -1e-5 and z.max() <= 1 + 1e-5, i
        assert size(got[i]) == pytest.approx(size(want), rel=1e-3, abs=1e-4), i
        if abs(w[i] @ (t[i] + want) - b[i]) < 1e-6 * np.abs(w[i]).sum():  # the hyperplane meets the box
            assert w[i] @ z == pytest.approx(b[i], abs=2e-3 * np.abs(w[i]).sum()), i
            reached += 1
        else:  # out of reach: the box's furthest point on the way
            assert w[i] @ z == pytest.approx(w[i] @ (t[i] + want), abs=2e-3 * np.abs(w[i]).sum()), i
        np.testing.assert_array_equal(got[i][w[i] == 0], 0.0)
        # the L2 step is unique; of the smallest L-inf steps, the original takes the one that moves every
        # coordinate by min(s, its room), as the reference does. Near the box's reach the few coordinates
        # left to move carry float32's error of the whole sum: a looser tolerance there
        np.testing.assert_allclose(got[i], want, atol=2e-4 if problems is _problems else 1e-2, err_msg=str(i))
    assert 0 < reached < len(t)
    del reference


# ---------------------------------------------------------------------- the loop, transcribed


def _network(seed=0, d=3 * 4 * 4, classes=5):
    """A small tanh network: not linear, so FAB needs its iterations; weights large enough to move."""
    rng = np.random.default_rng(seed)
    w1 = tf.constant(rng.normal(size=(d, 12)) * 0.6, tf.float32)
    w2 = tf.constant(rng.normal(size=(12, classes)) * 1.5, tf.float32)

    def model(x):
        return tf.tanh(tf.reshape(x, [tf.shape(x)[0], -1]) @ w1) @ w2

    return model


def _single_run_by_hand(model, im2, la2, la_t, norm, n_iter=10, alpha_max=0.1, eta=1.05, beta=0.9):
    """The original's `attack_single_run` (targeted, no random start) in numpy, the gradients and projections
    from TensorFlow (the projections are checked above): (closest adversarial example or im2, its distance)."""
    project = projection_linf if norm == np.inf else projection_l2
    m = len(im2)
    x1, x0 = im2.copy(), im2.reshape(m, -1)
    adv, res2 = im2.copy(), np.full(m, 1e10)
    for _ in range(n_iter):
        images = tf.constant(x1)
        with tf.GradientTape() as tape:
            tape.watch(images)
            out = model(images)
            diffy = -(tf.gather(out, la2, batch_dims=1) - tf.gather(out, la_t, batch_dims=1))
            total = tf.reduce_sum(diffy)
        dg = tape.gradient(total, images).numpy().reshape(m, -1)
        df = diffy.numpy()
        b = -df + (dg * x1.reshape(m, -1)).sum(-1)
        d3 = project(tf.constant(np.concatenate([x1.reshape(m, -1), x0])), tf.constant(np.concatenate([dg, dg])),
                     tf.constant(np.concatenate([b, b]))).numpy()
        d1, d2 = d3[:m].reshape(x1.shape), d3[m:].reshape(x1.shape)
        a0 = np.maximum(_dist(d3, norm), 1e-8)
        a1, a2 = a0[:m], a0[m:]
        alpha = np.minimum(np.maximum(a1 / (a1 + a2), 0), alpha_max).reshape(-1, 1, 1, 1)
        x1 = np.clip((x1 + eta * d1) * (1 - alpha) + (im2 + d2 * eta) * alpha, 0, 1)
        is_adv = model(tf.constant(x1)).numpy().argmax(1) != la2
        if is_adv.any():
            t = _dist((x1[is_adv] - im2[is_adv]).reshape(is_adv.sum(), -1), norm)
            closer = t < res2[is_adv]
            ia = np.nonzero(is_adv)[0]
            adv[ia[closer]] = x1[ia[closer]]
            res2[ia[closer]] = t[closer]
            x1[is_adv] = im2[is_adv] + (x1[is_adv] - im2[is_adv]) * beta
    return adv, res2


def _dist(v, norm):
    return np.abs(v).max(axis=1) if norm == np.inf else np.linalg.norm(v, axis=1)


def _fab_t_by_hand(model, x, y, eps, norm, n_iter=10, n_target_classes=3):
    """The original's targeted `perturb` with one restart: each runner-up class of the clean logits in turn on
    what is still robust; fooled where the closest adversarial example lies within eps."""
    logits = model(tf.constant(x)).numpy()
    acc = logits.argmax(1) == y
    order = np.argsort(logits, axis=1)
    for target_class in range(2, n_target_classes + 2):
        idx = np.nonzero(acc)[0]
        if not len(idx):
            break
        adv, _ = _single_run_by_hand(model, x[idx], y[idx], order[idx, -target_class], norm, n_iter)
        res = _dist((x[idx] - adv).reshape(len(idx), -1), norm)
        fooled = (model(tf.constant(adv)).numpy().argmax(1) != y[idx]) & (res <= eps)
        acc[idx[fooled]] = False
    return ~acc & (logits.argmax(1) == y)


def _case():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (24, 4, 4, 3)).astype(np.float32)
    x[:6, :2] = 0.0  # pixels on the box's faces
    model = _network()
    y = model(tf.constant(x)).numpy().argmax(1)
    y[-2:] = (y[-2:] + 1) % 5  # two wrong clean: never attacked
    return model, x, y


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_fab_run_iterate_by_iterate_as_the_originals_single_run(norm):
    model, x, y = _case()
    x, y = x[:-2], y[:-2]
    la_t = np.argsort(model(tf.constant(x)).numpy(), axis=1)[:, -3]  # the second runner-up
    want_adv, want_res = _single_run_by_hand(model, x, y, la_t, norm)
    adv, res, evals = fab_run(model, tf.constant(x), tf.constant(y), tf.constant(la_t), 0.0, norm, n_iter=10,
                              early_exit=False)
    assert np.sum(want_res < 1e10) > len(x) // 2
    np.testing.assert_allclose(res.numpy(), want_res, rtol=1e-4)
    np.testing.assert_allclose(adv.numpy(), want_adv, atol=2e-5)
    np.testing.assert_array_equal(evals.numpy(), 10)


@pytest.mark.parametrize("norm,eps", [(np.inf, 0.03), (2, 0.2)])
def test_fab_t_breaks_what_the_original_breaks(norm, eps):
    model, x, y = _case()
    want = _fab_t_by_hand(model, x, y, eps, norm)
    assert 2 < want.sum() < 22, "the case must fool some and not others"
    got, fooled, evals = fab_targeted(model, tf.constant(x), tf.constant(y), eps, norm, n_iter=10, n_target_classes=3)
    np.testing.assert_array_equal(fooled.numpy(), want)
    x_adv = got.numpy()
    np.testing.assert_array_equal(x_adv[~want], x[~want])
    assert np.all(_dist((x_adv - x).reshape(24, -1), norm)[want] <= eps * (1 + 1e-6))
    assert np.all(model(got).numpy().argmax(1)[want] != y[want])
    assert np.all(evals.numpy()[-2:] == 1) and evals.numpy().max() <= 31  # the ranking pass and 3 x 10 iterations
    # without early exit: every target in full, the closest adversarial example kept; the same verdicts
    _, every, every_evals = fab_targeted(model, tf.constant(x), tf.constant(y), eps, norm, n_iter=10,
                                         n_target_classes=3, early_exit=False)
    np.testing.assert_array_equal(every.numpy()[:-2], want[:-2])
    np.testing.assert_array_equal(every_evals.numpy(), 31)


def test_fab_stops_an_example_once_it_is_broken_within_eps_and_keeps_the_closest():
    rng = np.random.default_rng(4)
    x = tf.constant(rng.uniform(0, 1, (16, 4, 4, 3)).astype(np.float32))
    model = _network(1)
    y = tf.argmax(model(x), axis=1)
    t = tf.argsort(model(x), axis=1, direction="DESCENDING")[:, 1]
    adv, res, evals = fab_run(model, x, y, t, 0.05, n_iter=20)
    full_adv, full_res, full_evals = fab_run(model, x, y, t, 0.05, n_iter=20, early_exit=False)
    broken = res.numpy() <= 0.05
    assert 0 < broken.sum() < 16
    assert np.all(evals.numpy()[broken] < 20) and np.all(full_evals.numpy() == 20)
    np.testing.assert_array_equal(evals.numpy()[~broken], 20)
    assert np.all(full_res.numpy() <= res.numpy() + 1e-7)  # more iterations: never farther
    for a, r in ((adv, res), (full_adv, full_res)):
        found = r.numpy() < 1e10
        np.testing.assert_allclose(np.abs((a - x).numpy()).reshape(16, -1).max(1)[found], r.numpy()[found], rtol=1e-5)
        assert np.all(tf.argmax(model(a), axis=1).numpy()[found] != y.numpy()[found])
        np.testing.assert_array_equal(a.numpy()[~found], x.numpy()[~found])


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_fab_finds_the_boundary_of_a_linear_model_at_its_distance(norm):
    """Two classes, f_1 - f_0 = <v, x> - c: the closest point of the boundary is the projection; FAB
    overshoots it by eta at most. An eps just below that distance leaves the example robust."""
    rng = np.random.default_rng(5)
    v = rng.normal(size=(48,)).astype(np.float32)
    v -= v.mean()
    margin = np.array([0.2, 0.5, 1.0, 1.5, 2.0, 3.0], np.float32)
    flat = rng.uniform(0.45, 0.55, (6, 48)).astype(np.float32)
    flat -= ((flat @ v + margin) / (v @ v))[:, None] * v  # <v, x> = -margin: class 0 by `margin`
    assert flat.min() > 0.2 and flat.max() < 0.8  # the box does not get in the way
    x = flat.reshape(6, 4, 4, 3)
    distance = margin / (np.abs(v).sum() if norm == np.inf else np.linalg.norm(v))
    v_t = tf.constant(v)

    def model(images):
        f1 = tf.reshape(images, [tf.shape(images)[0], -1]) @ v_t[:, None]
        return tf.concat([tf.zeros_like(f1), f1], axis=1)

    y = tf.zeros([6], tf.int64)
    adv, res, _ = fab_run(model, tf.constant(x), y, tf.ones([6], tf.int64), 1.0, norm, n_iter=30, early_exit=False)
    assert np.all(res.numpy() >= distance * (1 - 1e-4)) and np.all(res.numpy() <= distance * 1.05 + 1e-6)
    _, fooled, _ = fab_targeted(model, tf.constant(x), y, float(distance[2]) * 1.06, norm, n_iter=30)
    np.testing.assert_array_equal(fooled.numpy(), [True, True, True, False, False, False])


def test_fab_t_random_restarts_start_at_half_eps():
    """A random start is a random direction (both signs alike, in every coordinate) scaled to eps / 2 in the
    attack's norm, clipped into the box."""
    tf.random.set_seed(0)
    x = tf.fill([4, 8, 8, 3], 0.5)
    y = tf.zeros([4], tf.int64)
    seen = []

    def model(images):
        seen.append(images)
        flat = 0.0 * tf.reduce_sum(images, axis=[1, 2, 3])[:, None]
        return tf.concat([flat + 1.0, flat], axis=1)

    for norm, size in ((np.inf, lambda d: np.abs(d).reshape(4, -1).max(1)),
                       (2, lambda d: np.linalg.norm(d.reshape(4, -1), axis=1))):
        seen.clear()
        fab_run(model, x, y, tf.ones([4], tf.int64), 0.2, norm, n_iter=1, random_start=True)
        delta = seen[0].numpy() - 0.5
        np.testing.assert_allclose(size(delta), 0.1, rtol=1e-5)
        assert 0.4 < np.mean(delta > 0) < 0.6, norm  # 768 coordinates: a standard error of 0.018
        assert abs(delta.mean()) < 0.2 * np.abs(delta).mean(), norm  # about 4 standard errors
        seen.clear()
        fab_run(model, x, y, tf.ones([4], tf.int64), 0.2, norm, n_iter=1)
        np.testing.assert_array_equal(seen[0].numpy(), x.numpy())
        seen.clear()
        fab_run(model, tf.fill([4, 8, 8, 3], 0.995), y, tf.ones([4], tf.int64), 0.2, norm, n_iter=1, random_start=True)
        assert seen[0].numpy().max() <= 1.0 and seen[0].numpy().max() == pytest.approx(1.0), norm


def test_fab_t_restarts_targets_early_exit_and_the_eps_boundary(monkeypatch):
    """fab_targeted around a stand-in for fab_run: later restarts start at random, an example fooled within
    eps leaves the next targets, and a distance of exactly eps counts as fooled (the original: robust only
    where the distance exceeds eps)."""
    import tfpurify.attacks.fab as fab

    calls = []
    eps = 0.25

    def run(model_fn, x, y, y_target, eps_, norm, n_iter, alpha_max, eta, beta, active, random_start=False,
            early_exit=True):
        calls.append({"random_start": random_start, "active": active.numpy().tolist(),
                      "target": y_target.numpy().tolist()})
        first = len(calls) == 1
        dist = tf.constant([0.1 if first else 1e10, eps if first else 1e10, 1e10], tf.float32)
        return x + 0.01, dist, tf.ones([3])

    monkeypatch.setattr(fab, "fab_run", run)
    x = tf.zeros([3, 2, 2, 1])

    def model(images):  # every example right (class 0), class 2 the runner-up, then 1
        return tf.tile(tf.constant([[3.0, 1.0, 2.0]]), [tf.shape(images)[0], 1])

    x_adv, fooled, _ = fab.fab_targeted(model, x, tf.zeros([3], tf.int64), eps, n_target_classes=2, n_restarts=2)
    assert [c["random_start"] for c in calls] == [False, True, False, True]
    assert [c["target"] for c in calls] == [[2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1]]
    assert calls[0]["active"] == [True, True, True] and calls[2]["active"] == [False, False, True]
    np.testing.assert_array_equal(fooled.numpy(), [True, True, False])
    np.testing.assert_array_equal(x_adv.numpy()[2], 0.0)


def test_autoattack_standard_runs_fab_t_third():
    order = []

    def stage(name):
        def run(model_fn, x, y, *args, active=None, **kwargs):
            order.append(name)
            return x, tf.zeros(tf.shape(y), tf.bool), tf.zeros(tf.shape(y))
        return run

    import tfpurify.attacks.autoattack as aa

    patched = {"apgd": stage("apgd_ce"), "apgd_targeted": stage("apgd_t"), "fab_targeted": stage("fab_t"),
               "square": stage("square")}
    saved = {k: getattr(aa, k) for k in patched}
    try:
        for k, fn in patched.items():
            setattr(aa, k, fn)
        model = _network()
        AutoAttack(model, 0.1)(tf.zeros([2, 4, 4, 3]), tf.constant([0, 1]))
    finally:
        for k, fn in saved.items():
            setattr(aa, k, fn)
    assert order == ["apgd_ce", "apgd_t", "fab_t", "square"]


def test_fab_t_registered_with_the_originals_settings_and_checked():
    p = resolve_params("fab_t")
    assert {k: p[k] for k in ("nb_iter", "n_target_classes", "n_restarts", "alpha_max", "eta", "beta",
                              "early_exit")} == {"nb_iter": 100, "n_target_classes": 9, "n_restarts": 1,
                                                 "alpha_max": 0.1, "eta": 1.05, "beta": 0.9, "early_exit": True}
    assert get_attack("fab_t").gradient
    for bad, match in (({"norm": "l1"}, "norm"), ({"alpha_max": 0}, "alpha_max"), ({"beta": 1.5}, "beta"),
                       ({"eta": 0.5}, "eta"), ({"n_target_classes": 0}, "n_target_classes")):
        with pytest.raises(AttackConfigError, match=match):
            resolve_params("fab_t", **bad)
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (8, 4, 4, 3)).astype(np.float32)
    model = _network()
    y = model(tf.constant(x)).numpy().argmax(1)
    x_adv = np.asarray(run_attack("fab_t", model, x, y, eps=0.1, nb_iter=10, n_target_classes=2))
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
    assert (model(tf.constant(x_adv)).numpy().argmax(1) != y).sum() > 0


@pytest.mark.parametrize("project", [projection_linf, projection_l2])
def test_a_zero_gradient_projects_to_no_step(project):
    t = tf.constant(np.random.default_rng(7).uniform(0, 1, (3, 12)), tf.float32)
    d = project(t, tf.zeros([3, 12]), tf.zeros([3])).numpy()
    np.testing.assert_array_equal(d, 0.0)


def test_fab_t_checks_each_setting_at_its_bounds_and_says_which():
    for good in ({"norm": 2}, {"alpha_max": 1.0}, {"beta": 1.0}, {"eta": 1.0}, {"eta": 10.0}, {"alpha_max": 1}):
        resolve_params("fab_t", **good)
    for bad, match in (({"norm": 3}, "norm 3; use inf or 2"), ({"alpha_max": 1.5}, "alpha_max"),
                       ({"alpha_max": True}, "alpha_max"), ({"beta": False}, "beta"), ({"beta": "0.5"}, "beta"),
                       ({"eta": True}, "eta"), ({"eta": 10.5}, "eta"), ({"eta": "2"}, "eta")):
        with pytest.raises(AttackConfigError, match=match):
            resolve_params("fab_t", **bad)


def test_fab_t_hands_every_setting_to_the_attack(monkeypatch):
    import tfpurify.attacks.fab as fab

    seen = {}

    def record(model_fn, x, y, eps, norm, n_iter, n_target_classes, n_restarts, alpha_max, eta, beta, active=None,
               early_exit=True):
        seen.update(eps=eps, norm=norm, n_iter=n_iter, n_target_classes=n_target_classes, n_restarts=n_restarts,
                    alpha_max=alpha_max, eta=eta, beta=beta, early_exit=early_exit)
        return x, tf.zeros([tf.shape(x)[0]], tf.bool), tf.ones([tf.shape(x)[0]])

    monkeypatch.setattr(fab, "fab_targeted", record)
    settings = dict(eps=0.3, norm=2, nb_iter=7, n_target_classes=3, n_restarts=2, alpha_max=0.2, eta=1.2, beta=0.5,
                    early_exit=False)
    x = np.zeros((2, 4, 4, 3), np.float32)
    run_attack("fab_t", _network(), x, np.array([0, 1]), **settings)
    settings["n_iter"] = settings.pop("nb_iter")
    assert seen == settings


def test_fab_defaults_are_the_originals():
    import inspect

    original = {"n_iter": 100, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}
    for fn, extra in ((fab_run, {}), (fab_targeted, {"n_target_classes": 9, "n_restarts": 1})):
        defaults = {k: v.default for k, v in inspect.signature(fn).parameters.items()}
        assert {k: defaults[k] for k in {**original, **extra}} == {**original, **extra}, fn.__name__
