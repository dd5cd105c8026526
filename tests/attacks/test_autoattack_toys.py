"""AutoAttack's parts on toy models whose answers are known: APGD-T's targets, Square's schedule and
search, the cascade's bookkeeping. Eager and fast (they run under `make mutation`); the schedule of APGD
itself is in test_apgd_schedule.py, the attacks on a trained classifier in test_autoattack.py."""

import numpy as np
import pytest
import tensorflow as tf

from tfpurify.attacks import autoattack


def _mean_logits(weights, bias):
    """logits_k = weights_k * mean pixel + bias_k, per image (differentiable, known by hand)."""
    w, b = tf.constant(weights, tf.float32), tf.constant(bias, tf.float32)

    def logits(x):
        m = tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1, keepdims=True)
        return m * w + b

    return logits


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_square_size_schedule_is_the_official_one(n):
    """p_selection of fra31/auto-attack's square.py: p_init halved after 10, 50, 200, 500, 1000, 2000, 4000,
    6000, 8000 of 10000 iterations; rescaled to n queries, or not (AutoAttack's Square: resc_schedule=False)."""
    bounds = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000]
    for i in (0, 1, 5, 6, 9, 10, 11, 49, 50, 51, 199, 201, 499, 501, 999, 1001, 1999, 2001, 3999, 4001, 5999,
              6001, 7999, 8001, 9999):
        for rescale in (True, False):
            it = int(i / n * 10000) if rescale else i
            expected = 0.8 / 2 ** sum(it > b for b in bounds)
            assert float(autoattack._square_p(tf.constant(i), n, 0.8, rescale)) == pytest.approx(expected), (i, rescale)
            halvings = sum(it > b for b in bounds)  # the index of L2 Square's window side
            assert int(autoattack._square_halvings(tf.constant(i), n, rescale)) == halvings, (i, rescale)


def test_square_breaks_a_toy_without_gradients_and_counts_its_queries():
    # class 1 wins once the mean pixel rises by more than 0.05 above 0.5; eps 0.1 allows 0.1
    x = np.full((6, 8, 8, 1), 0.5, np.float32)
    y = np.zeros(6, np.int64)
    model = _mean_logits([0.0, 10.0], [0.0, -5.5])
    tf.random.set_seed(0)
    x_adv, fooled, queries = autoattack.square(model, tf.constant(x), tf.constant(y), 0.1, n_queries=300)
    x_adv, fooled, queries = x_adv.numpy(), fooled.numpy(), queries.numpy()
    assert fooled.all()
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6 and x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(np.argmax(model(tf.constant(x_adv)), axis=1) == 1)  # what it returns is what fooled
    assert np.all(queries >= 1) and np.all(queries <= 301) and len(set(queries)) > 1  # stopped one by one
    # the start: vertical stripes of +-eps (one sign per column and channel)
    tf.random.set_seed(0)
    start, _, q0 = autoattack.square(model, tf.constant(x), tf.constant(y), 0.1, n_queries=0)
    delta = start.numpy() - x
    np.testing.assert_allclose(np.abs(delta), 0.1, atol=1e-6)
    assert np.all(delta == delta[:, :1])  # the same down every column
    np.testing.assert_array_equal(q0, 1)


def test_square_keeps_lower_margins_only_and_leaves_inactive_examples_alone():
    # never fooled (class 0 leads by 100): the margin can only fall; inactive examples stay clean
    x = np.random.default_rng(0).uniform(0.3, 0.7, (4, 6, 6, 1)).astype(np.float32)
    y = np.zeros(4, np.int64)
    model = _mean_logits([-3.0, 3.0], [100.0, 0.0])
    active = tf.constant([True, True, False, True])
    tf.random.set_seed(1)
    x_adv, fooled, queries = autoattack.square(model, tf.constant(x), tf.constant(y), 0.05, n_queries=50,
                                               active=active)
    x_adv = x_adv.numpy()
    assert not fooled.numpy().any()
    np.testing.assert_array_equal(queries, [51, 51, 0, 51])
    np.testing.assert_array_equal(x_adv[2], x[2])
    margin = lambda images: (lambda z: z[:, 0] - z[:, 1])(model(tf.constant(images)).numpy())  # noqa: E731
    tf.random.set_seed(1)
    start, _, _ = autoattack.square(model, tf.constant(x), tf.constant(y), 0.05, n_queries=0, active=active)
    assert np.all(margin(x_adv)[[0, 1, 3]] < margin(start.numpy())[[0, 1, 3]])  # improved on the start
    assert np.abs(x_adv - x).max() <= 0.05 + 1e-6


def test_square_of_a_detector_aware_target_counts_flagged_as_not_fooled():
    class Aware:  # logits plus a detector score column: flags every image whose mean pixel exceeds 0.55
        def __call__(self, x):
            m = tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1, keepdims=True)
            return tf.concat([tf.zeros_like(m), 10.0 * m - 5.5, 0.0 * m], axis=1)

        def logits(self, out):
            return out[:, :2]

        def flagged(self, out):
            return out[:, 1] > -0.05  # mean above 0.545: misclassified images are all flagged

    x = np.full((3, 6, 6, 1), 0.5, np.float32)
    tf.random.set_seed(0)
    _, fooled, queries = autoattack.square(Aware(), tf.constant(x), tf.zeros(3, tf.int64), 0.1, n_queries=40)
    assert not fooled.numpy().any() and np.all(queries.numpy() == 41)


# Class 0 true (logit 1000); class 1 (500), the runner-up, never wins; class 2 wins once the mean pixel
# exceeds 2/3, and till close to it its softmax is exactly 0 in float32, so the cross-entropy has no
# gradient there: APGD-CE stays where it starts. Untargeted DLR and DLR towards class 1 push class 2
# down (it is their third logit, in the denominator); DLR towards class 2, APGD-T's second target, gets
# there. Class 3 trails.
MASKED = ([0.0, 0.0, 6000.0, 0.0], [1000.0, 500.0, -3000.0, -50.0])


def test_apgd_t_tries_the_runner_ups_in_turn_on_what_is_left():
    model = _mean_logits(*MASKED)
    x = np.full((2, 4, 4, 1), 0.5, np.float32)
    y = np.zeros(2, np.int64)
    tf.random.set_seed(0)
    x_adv, fooled, evals = autoattack.apgd_targeted(model, tf.constant(x), tf.constant(y), 0.2, n_iter=10,
                                                    n_target_classes=2)
    assert fooled.numpy().all()
    assert np.all(np.argmax(model(x_adv).numpy(), axis=1) == 2)
    # the ranking pass, target 1 in full (start + 10 steps), then target 2 until it succeeds
    assert np.all(evals.numpy() > 1 + 11) and np.all(evals.numpy() <= 1 + 11 + 3)  # the second stops early
    _, fooled_1, evals_1 = autoattack.apgd_targeted(model, tf.constant(x), tf.constant(y), 0.2, n_iter=10,
                                                    n_target_classes=1)
    assert not fooled_1.numpy().any() and np.all(evals_1.numpy() == 1 + 11)  # class 1 alone: never
    _, fooled_a, evals_a = autoattack.apgd_targeted(model, tf.constant(x), tf.constant(y), 0.2, n_iter=10,
                                                    n_target_classes=2, active=tf.constant([False, True]))
    np.testing.assert_array_equal(fooled_a, [False, True])
    assert evals_a.numpy()[0] == 0


def test_first_success_keeps_the_first_success_and_sums_the_cost():
    x = tf.zeros((4, 1, 1, 1))
    calls = []

    def stage(value, fools):
        def run(active):
            calls.append((value, active.numpy().tolist()))
            return (tf.fill([4, 1, 1, 1], value), tf.logical_and(active, tf.constant(fools)),
                    tf.where(active, 10.0 * value, 0.0))
        return run

    stages = [stage(1.0, [True, False, False, False]), stage(2.0, [True, True, False, False]),
              stage(3.0, [False, False, True, False])]
    x_adv, fooled, cost = autoattack.first_success(stages, x, tf.constant([False, False, False, True]), tf.ones(4))
    np.testing.assert_array_equal(fooled, [True, True, True, True])
    np.testing.assert_array_equal(x_adv.numpy().ravel(), [1.0, 2.0, 3.0, 0.0])  # the 4th was fooled before
    np.testing.assert_array_equal(cost, [11.0, 31.0, 61.0, 1.0])
    assert calls == [(1.0, [True, True, True, False]), (2.0, [False, True, True, False]),
                     (3.0, [False, False, True, False])]
    calls.clear()
    x_adv, fooled, _ = autoattack.first_success(stages[:2], x, tf.zeros(4, tf.bool), tf.zeros(4), keep_last=True)
    np.testing.assert_array_equal(fooled, [True, True, False, False])
    np.testing.assert_array_equal(x_adv.numpy().ravel(), [1.0, 2.0, 2.0, 2.0])  # the unfooled keep the last try
    calls.clear()
    autoattack.first_success(stages, x, tf.constant([True, True, True, False]), tf.zeros(4))
    autoattack.first_success(stages, x, tf.ones(4, tf.bool), tf.zeros(4))
    assert calls == [(1.0, [False, False, False, True]), (2.0, [False, False, False, True]),
                     (3.0, [False, False, False, True])]  # and nothing when everything is fooled


def test_autoattack_runs_its_stages_in_order_on_what_is_left():
    model = _mean_logits(*MASKED)  # APGD-CE cannot win, APGD-T's second target can
    x = tf.constant(np.full((2, 4, 4, 1), 0.5, np.float32))
    y = tf.zeros(2, tf.int64)
    tf.random.set_seed(0)
    attack = autoattack.AutoAttack(model, 0.2, n_iter=10, n_target_classes=2, n_queries=30)
    x_adv, fooled, cost = attack(x, y)
    assert fooled.numpy().all() and np.all(np.argmax(model(x_adv).numpy(), axis=1) == 2)
    tf.random.set_seed(0)
    _, ce_fooled, _ = autoattack.apgd(model, x, y, 0.2, n_iter=10)
    assert not ce_fooled.numpy().any()
    cost = cost.numpy()  # the clean pass, APGD-CE in full, APGD-T (ranking, target 1 in full, target 2), no FAB-T,
    assert np.all(cost > 1 + 11 + 1 + 11) and np.all(cost <= 1 + 11 + 1 + 11 + 11)  # no Square
    # L2 too: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE and APGD-DLR with EOT
    assert len(autoattack.AutoAttack(model, 0.5, norm=2)._stages) == 4
    assert len(autoattack.AutoAttack(model, 0.2)._stages) == 4
    rand = autoattack.AutoAttack(model, 0.2, version="rand", n_iter=3, eot_iter=4)
    _, fooled_r, cost_r = rand(x, y)  # neither APGD-CE nor APGD-DLR (untargeted) wins: both run in full
    assert not fooled_r.numpy().any()
    np.testing.assert_array_equal(cost_r, 1 + 2 * 4 * (3 + 1))
    with pytest.raises(ValueError, match="unknown AutoAttack version"):
        autoattack.AutoAttack(model, 0.2, version="plus")
    # custom: the named stages only, in that order (ART's standard: no FAB-T), without EOT
    custom = autoattack.AutoAttack(model, 0.2, version="custom", attacks_to_run=("apgd-ce", "apgd-dlr"), n_iter=3,
                                   eot_iter=4)
    _, fooled_c, cost_c = custom(x, y)
    assert not fooled_c.numpy().any()
    np.testing.assert_array_equal(cost_c, 1 + 2 * (3 + 1))  # as rand's stages, one draw each
    assert len(autoattack.AutoAttack(model, 0.2, version="custom",
                                     attacks_to_run=("apgd-ce", "apgd-t", "square"))._stages) == 3
    for bad in (None, (), ("apgd-ce", "fab")):
        with pytest.raises(ValueError, match="version custom needs attacks_to_run"):
            autoattack.AutoAttack(model, 0.2, version="custom", attacks_to_run=bad)
    # the registry (and `eval --autoattack-version`): a comma list of stages is the custom version
    from tfpurify.attacks import resolve_params, run_attack
    from tfpurify.errors import AttackConfigError

    _, cost_r = run_attack("autoattack", model, x.numpy(), y.numpy(), eps=0.2, nb_iter=3, version="apgd-ce,apgd-dlr",
                           return_cost=True)
    np.testing.assert_array_equal(cost_r, 1 + 2 * (3 + 1))
    with pytest.raises(AttackConfigError, match="or a comma list of its stages"):
        resolve_params("autoattack", version="apgd-ce,fab")
    assert resolve_params("autoattack", version="apgd-ce, square")["version"] == "apgd-ce,square"
    assert resolve_params("autoattack", version="square")["version"] == "square"  # one stage is a list too


def test_square_schedule_choice_is_a_flag():
    from tfpurify.attacks import resolve_params
    from tfpurify.errors import AttackConfigError

    assert resolve_params("square")["rescale_schedule"] is True
    assert resolve_params("square", rescale_schedule=False)["rescale_schedule"] is False
    with pytest.raises(AttackConfigError, match="rescale_schedule must be true or false"):
        resolve_params("square", rescale_schedule="no")


def test_first_success_with_a_judge_keeps_attacking_what_it_does_not_confirm():
    x = tf.zeros((4, 1, 1, 1))
    calls = []

    def stage(value, says):
        def run(active):
            calls.append(active.numpy().tolist())
            return tf.fill([4, 1, 1, 1], value), tf.logical_and(active, tf.constant(says)), tf.where(active, 1.0, 0.0)
        return run

    # the judge confirms value 2 for examples 0 and 1 only, value 3 for example 2 only
    def judge(x_adv):
        v = float(x_adv[0, 0, 0, 0])
        return tf.constant({1.0: [False] * 4, 2.0: [True, True, False, False], 3.0: [False, False, True, False]}[v])

    stages = [stage(1.0, [True, True, True, False]), stage(2.0, [True, True, True, False]),
              stage(3.0, [True, True, True, False])]
    x_adv, fooled, cost = autoattack.first_success(stages, x, tf.zeros(4, tf.bool), tf.zeros(4), judge=judge)
    np.testing.assert_array_equal(fooled, [True, True, True, False])  # the judge's verdicts
    np.testing.assert_array_equal(x_adv.numpy().ravel(), [2.0, 2.0, 3.0, 0.0])  # confirmed results win
    assert calls == [[True] * 4, [True] * 4, [False, False, True, True]]  # claimed is not done
    np.testing.assert_array_equal(cost, [2.0, 2.0, 3.0, 3.0])
    # claimed by a stage but never confirmed: the first claim is kept, not the clean image or a later try
    never = lambda x_adv: tf.zeros(4, tf.bool)  # noqa: E731
    x_adv, fooled, _ = autoattack.first_success(stages, x, tf.zeros(4, tf.bool), tf.zeros(4), judge=never)
    assert not fooled.numpy().any()
    np.testing.assert_array_equal(x_adv.numpy().ravel(), [1.0, 1.0, 1.0, 0.0])
    x_adv, _, _ = autoattack.first_success(stages, x, tf.zeros(4, tf.bool), tf.zeros(4), keep_last=True, judge=never)
    np.testing.assert_array_equal(x_adv.numpy().ravel(), [1.0, 1.0, 1.0, 3.0])  # unclaimed: the last try


def test_autoattack_confirms_on_the_judge_from_the_clean_check_on():
    model = _mean_logits(*MASKED)  # APGD-T's second target fools it
    x = tf.constant(np.full((3, 4, 4, 1), 0.5, np.float32))
    y = tf.zeros(3, tf.int64)
    seen = []

    def judge_of(confirmable):
        def judge(images, labels):  # the scored pipeline: fooled where class 2 leads, only for `confirmable`
            seen.append(images.shape[0])
            return tf.logical_and(tf.argmax(model(images), axis=1) == 2, tf.constant(confirmable))
        return judge

    tf.random.set_seed(0)
    x_adv, fooled, cost = autoattack.AutoAttack(model, 0.2, n_iter=10, n_target_classes=2, n_queries=5,
                                                judge=judge_of([True, True, False]))(x, y)
    assert seen[0] == 3  # the clean check asks the judge too
    np.testing.assert_array_equal(fooled, [True, True, False])  # the judge's verdict, not the attacked model's
    assert np.argmax(model(x_adv).numpy()[2]) == 2  # example 2 keeps the result the attack claimed
    tf.random.set_seed(0)
    _, fooled_all, cost_all = autoattack.AutoAttack(model, 0.2, n_iter=10, n_target_classes=2, n_queries=5,
                                                    judge=judge_of([True, True, True]))(x, y)
    assert fooled_all.numpy().all()
    np.testing.assert_array_equal(cost.numpy()[:2], cost_all.numpy()[:2])
    assert cost.numpy()[2] > cost_all.numpy()[2]  # unconfirmed, example 2 went on to Square


def test_without_early_exit_every_example_takes_every_iteration():
    model = _mean_logits([0.0, 10.0], [0.0, -5.0])  # class 1 (wrong) leads from mean pixel 0.5 up
    x = tf.constant(np.full((2, 4, 4, 1), [[[[0.45]]], [[[0.6]]]], np.float32))  # the second is wrong clean
    y = tf.zeros(2, tf.int64)
    tf.random.set_seed(0)
    x_adv, fooled, evals = autoattack.apgd(model, x, y, 0.1, n_iter=10, early_exit=False)
    assert fooled.numpy().all() and np.all(evals.numpy() == 11)
    np.testing.assert_allclose(x_adv, np.minimum(x.numpy() + 0.1, 1.0), atol=1e-6)  # the highest loss: the corner
    tf.random.set_seed(0)
    _, _, evals = autoattack.apgd(model, x, y, 0.1, n_iter=10)
    np.testing.assert_array_equal(evals, [2, 1])  # early exit: the wrong one at its start, the other after a step
    tf.random.set_seed(0)
    x_sq, fooled_sq, queries = autoattack.square(model, x, y, 0.1, n_queries=30, early_exit=False)
    assert fooled_sq.numpy().all() and np.all(queries.numpy() == 31)
    assert np.all(model(x_sq).numpy()[:, 1] > model(x).numpy()[:, 1])  # pushed on past success
    tf.random.set_seed(0)
    x_aa, fooled_aa, cost = autoattack.AutoAttack(model, 0.1, n_iter=10, n_target_classes=1, n_queries=5,
                                                  early_exit=False)(x, y)
    assert fooled_aa.numpy().all()
    assert np.abs(x_aa.numpy()[1] - x.numpy()[1]).max() > 0.05  # wrong clean, and attacked all the same
    assert np.all(cost.numpy() == 1 + 11)  # APGD-CE in full fooled both: nothing left for the later stages


def test_square_eta_is_the_official_window():
    # eta(3): the top row the rectangles of eta_rectangles(1, 3) (1 at the centre, 1/4 across), the two rows
    # below the negative rectangles of eta_rectangles(2, 3); each part and the whole of unit norm
    top = np.array([0.25, 1.25, 0.25]) / np.sqrt(0.25 ** 2 * 2 + 1.25 ** 2)
    below = np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
    below = below / np.sqrt(np.sum(below ** 2))
    np.testing.assert_allclose(autoattack.square_eta(3), np.vstack([top, -below]) / np.sqrt(2), atol=1e-6)
    for s in (3, 5, 9, 25):
        e = autoattack.square_eta(s)
        assert e.shape == (s, s) and abs(np.sum(e ** 2) - 1) < 1e-5
        assert np.all(e[:s // 2] > 0) and np.all(e[s // 2:] < 0)
        np.testing.assert_allclose(e, e[:, ::-1], atol=1e-6)  # symmetric left to right


def test_l2_square_stays_on_the_sphere_and_breaks_a_toy():
    x = np.full((4, 10, 10, 1), 0.5, np.float32)
    y = np.zeros(4, np.int64)
    model = _mean_logits([0.0, 40.0], [0.0, -21.0])  # class 1 wins once the mean pixel exceeds 0.525
    tf.random.set_seed(0)
    start, _, q0 = autoattack.square(model, tf.constant(x), tf.constant(y), 1.0, n_queries=0, norm=2)
    norms = np.sqrt(np.sum((start.numpy() - x) ** 2, axis=(1, 2, 3)))
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)  # the start: norm eps
    np.testing.assert_array_equal(q0, 1)
    tf.random.set_seed(0)
    x_adv, fooled, queries = autoattack.square(model, tf.constant(x), tf.constant(y), 1.0, n_queries=400, norm=2)
    x_adv = x_adv.numpy()
    assert fooled.numpy().all() and np.all(np.argmax(model(tf.constant(x_adv)), axis=1) == 1)
    assert np.all(np.sqrt(np.sum((x_adv - x) ** 2, axis=(1, 2, 3))) <= 1.0 + 1e-4)
    assert np.all(queries.numpy() > 1) and np.all(queries.numpy() <= 401)
    assert float(np.mean(x_adv)) > 0.525  # it moved mass upwards, within the sphere
    with pytest.raises(ValueError, match="at least 5 x 5"):
        autoattack.square(model, tf.zeros((1, 4, 4, 1)), tf.zeros(1, tf.int64), 1.0, n_queries=1, norm=2)


def test_defaults_are_the_originals():
    import inspect

    def defaults(fn):
        return {k: v.default for k, v in inspect.signature(fn).parameters.items() if v.default is not v.empty}

    assert defaults(autoattack.AutoAttack) == {"norm": np.inf, "version": "standard", "n_iter": 100,
                                               "n_target_classes": 9, "n_queries": 5000, "eot_iter": 20,
                                               "early_exit": True, "judge": None, "attacks_to_run": None}
    assert defaults(autoattack.apgd_targeted) == {"norm": np.inf, "n_iter": 100, "n_target_classes": 9,
                                                  "active": None, "early_exit": True}
    assert defaults(autoattack.square)["rescale_schedule"] is True and defaults(autoattack.square)["early_exit"]
    for i in (6, 11, 26):  # the schedule is rescaled unless told otherwise
        assert float(autoattack._square_p(tf.constant(i), 5000, 0.8)) == float(
            autoattack._square_p(tf.constant(i), 5000, 0.8, True))


def test_square_eta_rectangles_by_their_definition():
    """eta_rectangles(x, y)[i, j] = sum over the nested rectangles k that hold (i, j) of 1 / (k + 1)^2, normalized;
    rectangle k spans rows x_c - 1 - k .. x_c + k - 1 and columns y_c - 1 - k .. y_c + k - 1, x_c = x // 2 + 1."""
    for x, y in ((2, 5), (3, 5), (4, 9), (5, 5), (12, 25)):
        x_c, y_c = x // 2 + 1, y // 2 + 1
        want = np.zeros((x, y))
        for i in range(x):
            for j in range(y):
                want[i, j] = sum(1.0 / (k + 1) ** 2 for k in range(max(x_c, y_c))
                                 if x_c - 1 - k <= i < x_c + k and y_c - 1 - k <= j < y_c + k)
        np.testing.assert_allclose(autoattack._eta_rectangles(x, y), want / np.sqrt(np.sum(want ** 2)), atol=1e-7)


def test_the_l2_windows_are_transposed_at_random():
    e = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    tf.random.set_seed(0)
    seen = {tuple(autoattack._random_transpose(e).numpy().ravel()) for _ in range(40)}
    assert seen == {(1.0, 2.0, 3.0, 4.0), (1.0, 3.0, 2.0, 4.0)}


# Class 0 true (1000); class 1 (800 + 1500 * (mean pixel - 0.5)) wins above 0.633, but near 0.5 its softmax
# is exactly 0 in float32: no cross-entropy gradient there, while the DLR ratio still has one.
DLR_ONLY = ([0.0, 1500.0, 0.0, 0.0], [1000.0, 50.0, -100.0, -50.0])


def test_autoattack_attacks_each_stage_on_what_is_left_and_with_its_own_loss_and_norm():
    # four examples at eps 0.05: wrong clean (mean pixel 0.7); broken by APGD-CE (0.662: above 0.65 the CE
    # gradient exists); only by APGD-T (0.63); never (0.2: class 2 out of reach), which Square gets
    model = _mean_logits(*MASKED)
    x = tf.constant(np.array([0.7, 0.662, 0.63, 0.2], np.float32)[:, None, None, None] * np.ones((1, 8, 8, 1),
                                                                                                np.float32))
    y = tf.zeros(4, tf.int64)
    tf.random.set_seed(0)
    _, fooled, cost = autoattack.AutoAttack(model, 0.05, n_iter=10, n_target_classes=2, n_queries=7)(x, y)
    cost = cost.numpy()
    np.testing.assert_array_equal(fooled, [True, True, True, False])
    assert cost[0] == 1  # the clean check only
    assert 1 < cost[1] <= 1 + 3  # APGD-CE, early (its first step reaches the corner), nothing after
    assert 1 + 11 + 1 < cost[2] <= 1 + 11 + 1 + 3  # APGD-T (class 2 is its first runner-up there), early
    assert cost[3] == 1 + 11 + 1 + 2 * 11 + 1 + 2 * 10 + 1 + 7  # everything, FAB-T and Square included
    # rand: APGD-CE then APGD-DLR, each with EOT; only DLR breaks this model, and only with L-inf steps
    model = _mean_logits(*DLR_ONLY)
    x = tf.constant(np.full((2, 8, 8, 1), 0.5, np.float32))
    tf.random.set_seed(0)
    _, ce_fooled, _ = autoattack.apgd(model, x, tf.zeros(2, tf.int64), 0.2, n_iter=10)
    assert not ce_fooled.numpy().any()
    tf.random.set_seed(0)
    x_adv, fooled, cost = autoattack.AutoAttack(model, 0.2, version="rand", n_iter=10, eot_iter=2)(
        x, tf.zeros(2, tf.int64))
    assert fooled.numpy().all() and np.all(cost.numpy() > 1 + 2 * 11)  # APGD-CE in full, then DLR
    assert np.abs(x_adv.numpy() - 0.5).max() > 0.15  # L-inf steps reach the corner
    tf.random.set_seed(0)
    _, fooled_l2, _ = autoattack.AutoAttack(model, 0.2, norm=2, version="rand", n_iter=10, eot_iter=2)(
        x, tf.zeros(2, tf.int64))
    assert not fooled_l2.numpy().any()  # an L2 ball of 0.2 moves the mean of 64 pixels by 0.025 at most


def test_apgd_t_without_early_exit_keeps_the_last_targets_highest_loss_point():
    model = _mean_logits(*MASKED)
    x = tf.constant(np.full((1, 4, 4, 1), 0.2, np.float32))  # never fooled
    tf.random.set_seed(0)
    x_adv, fooled, evals = autoattack.apgd_targeted(model, x, tf.zeros(1, tf.int64), 0.2, n_iter=5,
                                                    n_target_classes=2, early_exit=False)
    assert not fooled.numpy().any() and evals.numpy()[0] == 1 + 2 * 6
    assert np.abs(x_adv.numpy() - 0.2).max() > 0.1  # not handed back clean


def test_the_registered_attacks_take_their_parameters():
    from tfpurify import attacks

    model = _mean_logits(*MASKED)
    x = np.full((2, 8, 8, 1), 0.2, np.float32)  # never fooled: every stage runs in full
    y = np.zeros(2, np.int64)

    def cost(name, **params):
        return attacks.run_attack(name, model, x, y, eps=0.05, return_cost=True, **params)[1]

    np.testing.assert_array_equal(cost("apgd_ce", nb_iter=4, n_restarts=2), 2 * 5)
    np.testing.assert_array_equal(cost("apgd_dlr", nb_iter=3, eot_iter=2), 2 * 4)
    np.testing.assert_array_equal(cost("apgd_t", nb_iter=4, n_target_classes=2), 1 + 2 * 5)
    np.testing.assert_array_equal(cost("square", n_queries=6), 1 + 6)
    np.testing.assert_array_equal(cost("fab_t", nb_iter=4, n_target_classes=2), 1 + 2 * 4)
    np.testing.assert_array_equal(cost("fab_t", nb_iter=4, n_target_classes=1, n_restarts=3), 1 + 3 * 4)
    np.testing.assert_array_equal(cost("autoattack", nb_iter=4, n_target_classes=2, n_queries=6),
                                  1 + 5 + 1 + 2 * 5 + 1 + 2 * 4 + 1 + 6)
    np.testing.assert_array_equal(cost("autoattack", nb_iter=4, version="rand", eot_iter=3), 1 + 2 * 3 * 5)
    x_l2 = attacks.run_attack("square", model, x, y, eps=0.5, norm=2, n_queries=5)
    assert np.all(np.sqrt(np.sum((x_l2 - x) ** 2, axis=(1, 2, 3))) <= 0.5 + 1e-4)
    assert np.abs(x_l2 - x).max() < 0.5 and np.abs(x_l2 - x).max() > 0.01  # an L2 perturbation, not L-inf
    easy = _mean_logits([0.0, 10.0, 0.0, 0.0], [0.0, -5.0, -20.0, -20.0])  # wrong from a mean pixel of 0.5 on
    xe = np.full((2, 4, 4, 1), 0.48, np.float32)
    for name, params, full in (("apgd_ce", {"nb_iter": 4}, 5), ("apgd_t", {"nb_iter": 4, "n_target_classes": 1}, 1 + 5),
                               ("square", {"n_queries": 100}, 1 + 100),
                               ("fab_t", {"nb_iter": 4, "n_target_classes": 1}, 1 + 4)):
        _, early = attacks.run_attack(name, easy, xe, y, eps=0.1, return_cost=True, **params)
        _, late = attacks.run_attack(name, easy, xe, y, eps=0.1, return_cost=True, early_exit=False, **params)
        assert np.all(early < full) and np.all(late == full), (name, early, late)
    _, late = attacks.run_attack("autoattack", easy, xe, y, eps=0.1, return_cost=True, early_exit=False,
                                 nb_iter=4, n_target_classes=1, n_queries=6)
    np.testing.assert_array_equal(late, 1 + 5)  # APGD-CE in full; it fooled both, nothing left after


class _SquareToy:
    """Never fooled (class 0 leads by 50), a wiggly margin over 8x8x1 images; remembers every query (eager)."""

    def __init__(self):
        rng = np.random.default_rng(2)
        self.w = tf.constant(rng.normal(0, 2.0, (64, 2)).astype(np.float32))
        self.calls = []

    def margin(self, images):
        z = self(images, record=False).numpy()
        return z[:, 0] - z[:, 1:].max(axis=1)

    def __call__(self, images, record=True):
        if record:
            self.calls.append(images.numpy().copy())
        h = tf.sin(tf.reshape(images, [-1, 64]) @ self.w)
        return tf.concat([tf.fill([tf.shape(images)[0], 1], 50.0), h], axis=1)


def test_linf_square_query_by_query():
    """Each query changes one square window of the current best image, the window's side following the official
    schedule, every pixel of it moved to x + eps or x - eps with one sign per channel, the same window and sign for
    the whole batch; a candidate replaces the best image exactly where it lowers the margin."""
    x = np.random.default_rng(0).uniform(0.3, 0.7, (3, 8, 8, 1)).astype(np.float32)
    model, eps, n = _SquareToy(), 0.1, 60
    tf.random.set_seed(0)
    x_adv, fooled, queries = autoattack.square(model, tf.constant(x), tf.zeros(3, tf.int64), eps, n_queries=n)
    assert not fooled.numpy().any() and np.all(queries.numpy() == n + 1) and len(model.calls) == n + 1
    best, best_margin = model.calls[0], model.margin(tf.constant(model.calls[0]))
    sides, accepted, all_signs = [], 0, set()
    for i, candidate in enumerate(model.calls[1:]):
        p = 0.8 / 2 ** sum(int(i / n * 10000) > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
        s = min(max(int(round(np.sqrt(p * 64))), 1), 7)
        changed = np.abs(candidate - best) > 1e-7
        boxes = set()
        for k in range(3):
            rows, cols = np.nonzero(changed[k, :, :, 0])
            if len(rows):
                assert rows.max() - rows.min() < s and cols.max() - cols.min() < s, (i, s, rows, cols)
                boxes.add((rows.min(), cols.min()))
                moved = (candidate - x)[k][changed[k]]
                assert np.allclose(moved, eps, atol=1e-6) or np.allclose(moved, -eps, atol=1e-6), (i, moved)
        signs = {np.sign(float(((candidate - x)[k][changed[k]])[0])) for k in range(3) if changed[k].any()}
        assert len(signs) <= 1, (i, signs)  # one sign for the batch
        all_signs |= signs
        sides.append((s, max([0] + [np.ptp(np.nonzero(changed[k, :, :, 0])[0]) + 1 for k in range(3)
                                     if changed[k].any()])))
        margin = model.margin(tf.constant(candidate))
        take = margin < best_margin
        accepted += int(take.sum())
        best = np.where(take[:, None, None, None], candidate, best)
        best_margin = np.where(take, margin, best_margin)
    np.testing.assert_allclose(x_adv, best, atol=1e-7)  # what it returns is the best candidate
    assert 0 < accepted < 3 * n  # some candidates kept, some dropped
    assert all_signs == {1.0, -1.0}  # windows moved up and down
    for s in {s for s, _ in sides}:  # the window reaches its full side at least once per stage of the schedule
        assert max(seen for side, seen in sides if side == s) == s, (s, sides)


def test_registered_apgd_restarts_keep_the_last_try_and_ask_the_judge():
    from tfpurify import attacks

    model = _mean_logits(*MASKED)
    x = np.full((2, 8, 8, 1), 0.2, np.float32)  # never fooled
    y = np.zeros(2, np.int64)
    x_adv = attacks.run_attack("apgd_ce", model, x, y, eps=0.05, nb_iter=3, n_restarts=2)
    assert np.abs(x_adv - x).max() == pytest.approx(0.05, abs=1e-6)  # the last try's L-inf corner, not x
    easy = _mean_logits([0.0, 10.0, 0.0, 0.0], [0.0, -5.0, -20.0, -20.0])  # wrong from a mean pixel of 0.5 on
    xe = np.full((2, 4, 4, 1), 0.48, np.float32)
    asked = []

    def judge(images, labels):  # the scored pipeline: example 1 is never fooled (traced once per run)
        asked.append(1)
        return tf.logical_and(tf.argmax(easy(images), axis=1) != labels, tf.constant([True, False]))

    _, cost = attacks.run_attack("apgd_ce", easy, xe, y, eps=0.1, nb_iter=4, n_restarts=3, return_cost=True,
                                 judge=judge)
    assert asked and cost[0] <= 3 and cost[1] > 2 * cost[0]  # example 1 went on to the other restarts
    _, cost_free = attacks.run_attack("apgd_ce", easy, xe, y, eps=0.1, nb_iter=4, n_restarts=3, return_cost=True)
    assert cost_free[1] <= 3  # without a judge, the first success ends it
    asked.clear()
    _, cost_off = attacks.run_attack("apgd_ce", easy, xe, y, eps=0.1, nb_iter=4, n_restarts=3, return_cost=True,
                                     judge=judge, early_exit=False)
    assert not asked
    np.testing.assert_array_equal(cost_off, 5)  # without early exit: one restart in full, the judge not asked


def test_each_gradient_step_averages_its_draws_and_subtracts_the_detector_penalty():
    from tfpurify.attacks.loop import Target

    class Drawn:  # a stochastic detector-aware target: draw k scales the logits by k + 1; penalty = mean pixel
        def __init__(self):
            self.k = 0

        def __call__(self, images):
            self.k += 1
            m = tf.reduce_mean(tf.reshape(images, [tf.shape(images)[0], -1]), axis=1, keepdims=True)
            logits = tf.concat([m, -m, 0.0 * m], axis=1) * float(self.k)
            return tf.concat([logits, m], axis=1)  # the last column: the detector penalty

        def logits(self, out):
            return out[:, :3]

    x = tf.constant(np.full((2, 2, 2, 1), [[[[0.2]]], [[[0.6]]]], np.float32))
    y = tf.zeros(2, tf.int64)
    step = autoattack._grad_step(Target(Drawn()), autoattack._loss_fn("ce"), eot_iter=3)
    loss, grad, _ = step(x, y, y)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    want_loss, want_grad = 0.0, 0.0
    for k in (1, 2, 3):
        xv = tf.identity(x)
        with tf.GradientTape() as tape:
            tape.watch(xv)
            m = tf.reduce_mean(tf.reshape(xv, [2, -1]), axis=1, keepdims=True)
            value = ce(y, tf.concat([m, -m, 0.0 * m], axis=1) * k) - m[:, 0]
            total = tf.reduce_sum(value)
        want_loss += value.numpy() / 3
        want_grad += tape.gradient(total, xv).numpy() / 3
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


class _ColourToy:
    """Never fooled (class 0 leads by 50), a wiggly margin over 12x12x3 images; remembers every query (eager)."""

    def __init__(self):
        rng = np.random.default_rng(3)
        self.w = tf.constant(rng.normal(0, 1.0, (12 * 12 * 3, 3)).astype(np.float32))
        self.calls = []

    def margin(self, images):
        z = self(tf.constant(images, tf.float32), record=False).numpy()
        return z[:, 0] - z[:, 1:].max(axis=1)

    def __call__(self, images, record=True):
        if record:
            self.calls.append(images.numpy().copy())
        h = tf.sin(tf.reshape(images, [-1, 12 * 12 * 3]) @ self.w)
        return tf.concat([tf.fill([tf.shape(images)[0], 1], 50.0), h], axis=1)


@pytest.mark.parametrize("low, high, eps, rescale", [
    (0.2, 0.8, 0.5, True),  # inside the box: the perturbation stays on the sphere
    (0.0, 0.02, 0.5, True),  # at the box's edge: the start is clipped, the mass eps lacks is shared per channel
    (0.2, 0.8, 2.0, False),  # eps above 1, and AutoAttack's unrescaled side schedule
])
def test_l2_square_query_by_query(monkeypatch, low, high, eps, rescale):
    """The official L2 update in numpy, fed with the draws the attack made (recorded): the start grid of eta
    windows with a sign per example and channel (cut at the border: 12 is not a multiple of 5 windows of 2),
    then per query the side from the schedule, a redrawn eta window added to the old one's direction, the second
    window zeroed, the mass rescaled per channel to keep norm eps, the candidate kept where the margin falls.
    The redrawn window's signs are fair coins (each way about half the time)."""
    tf.random.set_seed(5)
    draws, uniform, query_signs = [], tf.random.uniform, []

    def recorded(*args, **kwargs):
        out = uniform(*args, **kwargs)
        draws.append(out.numpy())
        return out

    monkeypatch.setattr(tf.random, "uniform", recorded)
    n, h, c, n_queries = 2, 12, 3, 40
    x = np.random.default_rng(1).uniform(low, high, (n, h, h, c)).astype(np.float32)
    model = _ColourToy()
    x_adv, fooled, queries = autoattack.square(model, tf.constant(x), tf.zeros(n, tf.int64), eps, n_queries=n_queries,
                                               norm=2, rescale_schedule=rescale)
    assert not fooled.numpy().any() and len(model.calls) == n_queries + 1
    draws = iter(draws)

    def eta(s):
        e = autoattack.square_eta(s).astype(np.float64)
        return e.T if next(draws) > 0.5 else e

    def sign():
        return np.sign(next(draws))  # [n, 1, 1, c]

    def unit(d):
        return d / (np.sqrt(np.sum(d ** 2, axis=(1, 2, 3), keepdims=True)) + 1e-12)

    s0, delta = h // 5, np.zeros((n, h, h, c))
    top0 = (h - 5 * s0) // 2
    for row in range(h // s0):
        for col in range(h // s0):
            block = eta(s0)[None, :, :, None] * sign()
            top, left = top0 + row * s0, top0 + col * s0
            delta[:, top:top + s0, left:left + s0] += block[:, :h - top, :h - left]
    best = np.clip(x + unit(delta) * eps, 0, 1)
    np.testing.assert_allclose(model.calls[0], best, atol=1e-6)
    if low == 0.0:  # the case is what it says: the clipped start lacks mass
        assert np.all(np.sqrt(np.sum((best - x) ** 2, axis=(1, 2, 3))) < 0.9 * eps)
    best_margin, accepted, sides = model.margin(best), 0, set()
    for i, candidate in enumerate(model.calls[1:]):
        it = int(i / n_queries * 10000) if rescale else i
        p = 0.8 / 2 ** sum(it > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
        s = max(int(round(np.sqrt(p * h * h))), 3)
        s = min(s + 1 if s % 2 == 0 else s, h)
        sides.add(s)
        e = eta(s)
        vh, vw, vh2, vw2 = (int(next(draws)) for _ in range(4))
        d = best.astype(np.float64) - x
        old = d[:, vh:vh + s, vw:vw + s]
        mask = np.zeros((1, h, h, 1))
        mask[:, vh:vh + s, vw:vw + s] = 1
        mask[:, vh2:vh2 + s, vw2:vw2 + s] = 1
        norm_image = np.sqrt(np.sum(d ** 2, axis=(1, 2, 3), keepdims=True))
        norm_windows = np.sqrt(np.sum((d * mask) ** 2, axis=(1, 2), keepdims=True))  # per example and channel
        query_signs.append(sign())
        new = e[None, :, :, None] * query_signs[-1] + old / (1e-12 + np.sqrt(np.sum(old ** 2, axis=(1, 2), keepdims=True)))
        new = new / (1e-12 + np.sqrt(np.sum(new ** 2, axis=(1, 2), keepdims=True))) * np.sqrt(
            np.maximum(eps ** 2 - norm_image ** 2, 0) / c + norm_windows ** 2)
        d[:, vh2:vh2 + s, vw2:vw2 + s] = 0
        d[:, vh:vh + s, vw:vw + s] = new
        want = np.clip(x + unit(d) * eps, 0, 1)
        np.testing.assert_allclose(candidate, want, atol=2e-5, err_msg=f"query {i}")
        margin = model.margin(candidate)
        take = margin < best_margin
        accepted += int(take.sum())
        best = np.where(take[:, None, None, None], candidate, best)
        best_margin = np.where(take, margin, best_margin)
    assert next(draws, None) is None  # every draw accounted for
    np.testing.assert_allclose(x_adv, best, atol=1e-6)
    assert 0 < accepted < n * n_queries and len(sides) > 1
    assert 0.4 < np.mean(np.array(query_signs) > 0) < 0.6  # 240 coins


def _spy(name, calls):
    """A stand-in for autoattack.<name> that records its arguments by parameter name (defaults filled in)
    and returns the images unchanged, nothing fooled, one evaluation each."""
    import inspect

    real = getattr(autoattack, name)

    def spy(*args, **kwargs):
        bound = inspect.signature(real).bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append((name, dict(bound.arguments)))
        x, y = bound.arguments["x"], bound.arguments["y"]
        n = tf.shape(y)[0]
        return tf.identity(x), tf.zeros([n], tf.bool), tf.ones([n])

    return spy


def _settings(calls, name, keys):
    (args,) = [a for n, a in calls if n == name]
    return {k: args[k] for k in keys}


def test_autoattack_hands_every_setting_to_its_stages(monkeypatch):
    calls = []
    for name in ("apgd", "apgd_targeted", "fab_targeted", "square"):
        monkeypatch.setattr(autoattack, name, _spy(name, calls))
    model = _mean_logits([1.0, -1.0, 0.5], [0.0, 0.1, 0.2])
    x, y = tf.zeros([2, 4, 4, 3]), tf.constant([0, 1])
    autoattack.AutoAttack(model, 0.3, norm=2, n_iter=7, n_target_classes=2, n_queries=11, early_exit=False)(x, y)
    same = {"eps": 0.3, "norm": 2, "early_exit": False}
    assert _settings(calls, "apgd", [*same, "n_iter", "loss", "eot_iter"]) == {**same, "n_iter": 7, "loss": "ce",
                                                                                 "eot_iter": 1}
    for name in ("apgd_targeted", "fab_targeted"):
        assert _settings(calls, name, [*same, "n_iter", "n_target_classes"]) == {**same, "n_iter": 7,
                                                                                  "n_target_classes": 2}, name
    # the original's AutoAttack builds Square with resc_schedule=False
    assert _settings(calls, "square", [*same, "n_queries", "p_init", "rescale_schedule"]) == {
        **same, "n_queries": 11, "p_init": 0.8, "rescale_schedule": False}
    calls.clear()
    asked = []

    def judge(images, labels):  # without early exit there is nothing to judge: never asked
        asked.append(labels)
        return tf.ones([tf.shape(images)[0]], tf.bool)

    autoattack.AutoAttack(model, 0.3, norm=2, version="rand", n_iter=7, eot_iter=3, early_exit=False,
                          judge=judge)(x, y)
    assert [(n, a["loss"], a["eot_iter"], a["norm"], a["n_iter"], a["early_exit"]) for n, a in calls] == [
        ("apgd", "ce", 3, 2, 7, False), ("apgd", "dlr", 3, 2, 7, False)]
    assert not asked
    assert all(a["active"] is not None for _, a in calls)  # each stage told what is left to attack


def test_the_registry_hands_every_setting_to_the_attack(monkeypatch):
    from tfpurify.attacks import resolve_params, run_attack

    calls = []
    for name in ("apgd", "apgd_targeted", "square"):
        monkeypatch.setattr(autoattack, name, _spy(name, calls))
    model = _mean_logits([1.0, -1.0, 0.5], [0.0, 0.1, 0.2])
    x, y = np.zeros((2, 4, 4, 3), np.float32), np.array([0, 1])
    same = {"eps": 0.3, "norm": 2, "early_exit": False}
    run_attack("apgd_dlr", model, x, y, nb_iter=7, eot_iter=3, **same)
    assert _settings(calls, "apgd", [*same, "n_iter", "loss", "eot_iter"]) == {**same, "n_iter": 7, "loss": "dlr",
                                                                                 "eot_iter": 3}
    run_attack("apgd_t", model, x, y, nb_iter=7, n_target_classes=2, **same)
    assert _settings(calls, "apgd_targeted", [*same, "n_iter", "n_target_classes"]) == {**same, "n_iter": 7,
                                                                                         "n_target_classes": 2}
    run_attack("square", model, x, y, n_queries=11, p_init=0.3, rescale_schedule=False, **same)
    assert _settings(calls, "square", [*same, "n_queries", "p_init", "rescale_schedule"]) == {
        **same, "n_queries": 11, "p_init": 0.3, "rescale_schedule": False}

    built, real = [], autoattack.AutoAttack

    class Recorder:
        def __init__(self, *args, **kwargs):
            import inspect

            bound = inspect.signature(real.__init__).bind(self, *args, **kwargs)
            bound.apply_defaults()
            built.append({k: v for k, v in bound.arguments.items() if k != "self"})

        def __call__(self, x, y):
            n = tf.shape(y)[0]
            return x, tf.zeros([n], tf.bool), tf.ones([n])

    monkeypatch.setattr(autoattack, "AutoAttack", Recorder)

    def judge(images, labels):
        return tf.zeros([tf.shape(images)[0]], tf.bool)

    p = resolve_params("autoattack", eps=0.3, norm=2, version="rand", nb_iter=7, n_target_classes=2, n_queries=11,
                       eot_iter=3, early_exit=False)
    autoattack._autoattack(model, p, judge=judge)
    assert {k: v for k, v in built[0].items() if k != "model_fn"} == {
        "eps": 0.3, "norm": 2, "version": "rand", "n_iter": 7, "n_target_classes": 2, "n_queries": 11, "eot_iter": 3,
        "early_exit": False, "judge": judge, "attacks_to_run": None}


def test_staged_apgd_asks_the_judge_about_the_true_labels():
    from tfpurify.attacks import resolve_params

    asked = []

    def judge(images, labels):
        asked.append(labels)
        return tf.ones([tf.shape(images)[0]], tf.bool)

    model = _mean_logits([1.0, -1.0, 0.5], [0.0, 0.1, 0.2])
    run = autoattack._apgd("ce", model, resolve_params("apgd_ce", eps=0.1, nb_iter=3), judge=judge)
    run(tf.zeros([2, 4, 4, 3]), tf.constant([2, 1], tf.int64))
    assert asked and all(np.array_equal(np.asarray(a), [2, 1]) for a in asked)


class _NeverFlagging:
    """A detector-aware toy target whose outputs are `columns(m)` of each image's mean pixel m ([N, 1]): two
    logits, then the detector's score; it never flags."""

    def __init__(self, columns):
        self.columns = columns

    def __call__(self, x):
        m = tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1, keepdims=True)
        return tf.concat(self.columns(m), axis=1)

    def logits(self, out):
        return out[:, :2]

    def flagged(self, out):
        return tf.zeros(tf.shape(out)[:1], tf.bool)


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_square_of_a_detector_aware_target_lowers_the_detector_score(norm):
    """Against a detector-aware target Square minimises margin + the detector's score: where the class cannot
    move, the search walks the score down (here the score is the mean pixel)."""
    aware = _NeverFlagging(lambda m: [tf.ones_like(m), tf.zeros_like(m), m])  # the true class always wins

    x = np.full((4, 6, 6, 1), 0.5, np.float32)
    tf.random.set_seed(1)
    x_adv, fooled, _ = autoattack.square(aware, tf.constant(x), tf.zeros(4, tf.int64), 0.1 if norm == np.inf else 0.5,
                                         n_queries=60, norm=norm)
    assert not fooled.numpy().any()
    assert np.all(x_adv.numpy().mean(axis=(1, 2, 3)) < 0.5 - (0.02 if norm == np.inf else 0.002))


def test_autoattack_asks_the_judge_first_and_about_the_true_labels(monkeypatch):
    calls, asked = [], []
    for name in ("apgd", "apgd_targeted", "fab_targeted", "square"):
        monkeypatch.setattr(autoattack, name, _spy(name, calls))
    model = _mean_logits([1.0, -1.0, 0.5], [0.0, 0.1, 0.2])  # class 2 wins on zeros: the model is fooled

    def judge(images, labels):  # the scored pipeline is never fooled
        asked.append(labels)
        return tf.zeros([tf.shape(images)[0]], tf.bool)

    x, y = tf.zeros([2, 4, 4, 3]), tf.constant([0, 1])
    _, fooled, _ = autoattack.AutoAttack(model, 0.3, judge=judge)(x, y)
    assert [n for n, _ in calls] == ["apgd", "apgd_targeted", "fab_targeted", "square"]  # all left to attack
    assert not fooled.numpy().any()
    assert asked and all(np.array_equal(np.asarray(a), [0, 1]) for a in asked)


@pytest.mark.parametrize("norm", [np.inf, 2])
def test_square_on_images_that_are_not_square(norm):
    """Height and width differ (6 x 10, three channels): every candidate stays within eps and in the box,
    and an example the eps-ball can break is broken (class 1 wins once the mean pixel passes 0.5)."""
    model = _mean_logits([0.0, 10.0], [1.0, -4.0])
    x = np.full((3, 6, 10, 3), 0.47, np.float32)
    eps = 0.1 if norm == np.inf else 3.0
    tf.random.set_seed(0)
    x_adv, fooled, _ = autoattack.square(model, tf.constant(x), tf.zeros(3, tf.int64), eps, n_queries=200, norm=norm)
    d = (x_adv.numpy() - x).reshape(3, -1)
    size = np.abs(d).max(axis=1) if norm == np.inf else np.linalg.norm(d, axis=1)
    assert np.all(size <= eps + 1e-5) and x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0
    assert fooled.numpy().all()


def test_square_starts_as_the_original():
    """Before its first query (n_queries=0) Square stands at its start: L-inf, vertical stripes of +-eps with one
    sign per column and channel; L2, a 5 x 5 grid of eta windows with one sign per example, channel and window,
    scaled to norm eps; both clipped into the box, both signs alike."""
    never = _mean_logits([0.0, 0.0], [1.0, 0.0])  # class 0 always wins: nothing is fooled
    tf.random.set_seed(0)
    x = np.full((32, 28, 28, 2), 0.95, np.float32)
    start, _, _ = autoattack.square(never, tf.constant(x), tf.zeros(32, tf.int64), 0.1, n_queries=0)
    d = start.numpy() - x
    np.testing.assert_allclose(d, np.broadcast_to(d[:, :1], d.shape))  # one value down each column
    assert set(np.round(d[:, 0].ravel().astype(float), 4)) == {0.05, -0.1}  # +eps clipped at 1
    assert 0.42 < np.mean(d[:, 0] > 0) < 0.58  # 1792 column signs: a standard error of 0.012

    x = np.full((32, 28, 28, 1), 0.5, np.float32)
    start, _, _ = autoattack.square(never, tf.constant(x), tf.zeros(32, tf.int64), 3.0, n_queries=0, norm=2)
    d = start.numpy() - x
    np.testing.assert_allclose(np.linalg.norm(d.reshape(32, -1), axis=1), 3.0, rtol=1e-4)
    centres = 1 + 5 * np.arange(5) + 2  # side 28 // 5 = 5, the grid centred: (28 - 25) // 2 = 1 pixel off the edge
    signs = np.sign(d[:, centres][:, :, centres])  # 800 windows (a centre carries its window's sign, negated)
    assert np.all(signs != 0) and 0.42 < np.mean(signs > 0) < 0.58  # a standard error of 0.018
    near_one = np.full((4, 28, 28, 1), 0.99, np.float32)
    start, _, _ = autoattack.square(never, tf.constant(near_one), tf.zeros(4, tf.int64), 3.0, n_queries=0, norm=2)
    assert start.numpy().max() <= 1.0


def test_square_windows_on_three_channels_near_the_box_edge():
    """L-inf Square on 8 x 8 x 3 images near 1, p_init 0.3, the schedule not rescaled: each query changes pixels
    inside one window wholly in the image, whose side follows p_init and the schedule (pixels per channel), moved
    to x +- eps and clipped into the box; the signs of both kinds alike. And L2 Square when the window's side is
    the image's (5 x 5, p_init 1): every window stays inside."""
    class Toy:
        def __init__(self):
            self.w = tf.constant(np.random.default_rng(3).normal(0, 2.0, (192, 2)).astype(np.float32))
            self.calls = []

        def __call__(self, images):
            self.calls.append(images.numpy().copy())
            return tf.concat([tf.fill([tf.shape(images)[0], 1], 50.0),
                              tf.sin(tf.reshape(images, [-1, 192]) @ self.w)], axis=1)

        def margin(self, images):
            return 50.0 - np.sin(images.reshape(-1, 192) @ self.w.numpy()).max(axis=1)

    x = np.random.default_rng(1).uniform(0.85, 0.99, (2, 8, 8, 3)).astype(np.float32)
    model, eps, n = Toy(), 0.1, 80
    tf.random.set_seed(0)
    autoattack.square(model, tf.constant(x), tf.zeros(2, tf.int64), eps, n_queries=n, p_init=0.3,
                      rescale_schedule=False)
    best, signs, widest = model.calls[0], [], 0
    for i, candidate in enumerate(model.calls[1:]):
        assert candidate.max() <= 1.0 and candidate.min() >= 0.0
        p = 0.3 / 2 ** sum(i > b for b in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))  # not rescaled
        s = min(max(int(round(np.sqrt(p * 64))), 1), 7)
        changed = np.abs(candidate - best) > 1e-7
        rows, cols = np.nonzero(changed.any(axis=(0, 3)))  # the batch shares the window
        if len(rows):
            assert rows.max() - rows.min() < s and cols.max() - cols.min() < s, (i, s)
            assert rows.min() <= 8 - s and cols.min() <= 8 - s, (i, s, rows.min(), cols.min())  # inside
            widest = max(widest, rows.max() - rows.min() + 1)
        for ch in range(3):
            if changed[0, :, :, ch].any():
                signs.append(np.sign((candidate - x)[0, :, :, ch][changed[0, :, :, ch]].mean()))
        take = model.margin(candidate) < model.margin(best)
        best = np.where(take[:, None, None, None], candidate, best)
    assert len(signs) > 100 and 0.4 < np.mean(np.array(signs) > 0) < 0.6  # 200 signs, seed fixed: 0.49
    assert widest == 4  # the side follows p_init: 4 at 0.3 where 0.8 would give 7

    small = np.full((2, 5, 5, 1), 0.5, np.float32)
    never = _mean_logits([0.0, 0.0], [1.0, 0.0])
    x_adv, _, _ = autoattack.square(never, tf.constant(small), tf.zeros(2, tf.int64), 1.0, n_queries=10, p_init=1.0,
                                    norm=2, rescale_schedule=False)  # side 5 for all ten queries
    np.testing.assert_allclose(np.linalg.norm((x_adv.numpy() - small).reshape(2, -1), axis=1), 1.0, rtol=1e-4)
    toy, bright = _SquareToy(), np.full((2, 8, 8, 1), 0.95, np.float32)  # every query clipped into the box
    autoattack.square(toy, tf.constant(bright), tf.zeros(2, tf.int64), 1.0, n_queries=20, norm=2)
    assert max(call.max() for call in toy.calls) <= 1.0


def test_an_unknown_apgd_loss_is_named():
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        autoattack._loss_fn("hinge")


def test_square_without_early_exit_keeps_the_lowest_margin_it_queried():
    """Gray-box and transfer Square (no early exit) takes a candidate only where it lowers the margin, past success
    too: it ends at the most confident mistake of all it queried."""
    rng = np.random.default_rng(5)
    w = tf.constant(rng.normal(0, 3.0, (64, 1)).astype(np.float32))
    calls = []

    def model(images):  # class 0 leads by 0.1; a wiggly class 1 often overtakes it
        calls.append(images.numpy().copy())
        return tf.concat([tf.fill([tf.shape(images)[0], 1], 0.1), tf.sin(tf.reshape(images, [-1, 64]) @ w)], axis=1)

    x = rng.uniform(0.3, 0.7, (4, 8, 8, 1)).astype(np.float32)
    tf.random.set_seed(2)
    x_adv, fooled, _ = autoattack.square(model, tf.constant(x), tf.zeros(4, tf.int64), 0.1, n_queries=60,
                                         early_exit=False)

    def margin(images):  # Square's: a right answer counts at least 1e-6
        m = 0.1 - np.sin(images.reshape(-1, 64) @ w.numpy())[:, 0]
        return np.where(m > 0, np.maximum(m, 1e-6), m)

    lowest = np.min([margin(c) for c in calls], axis=0)
    assert fooled.numpy().all()
    np.testing.assert_allclose(margin(x_adv.numpy()), lowest, rtol=1e-5, atol=1e-6)


def test_square_takes_a_success_that_raises_the_detector_score():
    """With early exit Square keeps a candidate that fools the target unflagged even where margin + score rose:
    the original takes every misclassified candidate (here the score, 100 |mean - 0.52|, rises past the
    class boundary at a mean pixel of 0.55, and nothing is ever flagged)."""
    aware = _NeverFlagging(lambda m: [tf.zeros_like(m), 10.0 * m - 5.5, 100.0 * tf.abs(m - 0.52)])

    x = np.full((8, 8, 8, 1), 0.5, np.float32)
    tf.random.set_seed(0)
    x_adv, fooled, _ = autoattack.square(aware, tf.constant(x), tf.zeros(8, tf.int64), 0.2, n_queries=300)
    fooled = fooled.numpy()
    assert fooled.sum() >= 2  # a lower margin + score never comes with a success here: only this rule takes one
    assert np.all(x_adv.numpy()[fooled].mean(axis=(1, 2, 3)) > 0.55)
