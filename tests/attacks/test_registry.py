import pytest

from tfpurify import attacks
from tfpurify.errors import AttackConfigError


@pytest.mark.parametrize("name,params,match", [
    ("pgd", {"eps": -0.1}, "eps must be"),
    ("pgd", {"eps": 0.1, "eps_iter": 0.2}, "eps_iter"),
    ("pgd", {"eps": 0.1, "norm": 3}, "unknown norm"),
    ("pgd", {"eps": 1.5}, "larger than the pixel range"),
    ("pgd", {"eps": float("nan")}, "eps must be"),
    ("pgd", {"nb_iter": 0}, "nb_iter"),
    ("fgsm", {"nb_iter": 3}, "does not take nb_iter"),
    ("spsa", {"norm": 2}, "only norm inf"),
    ("pgd", {"eps": 0.1, "eps_iter": 0.0}, "eps_iter"),
    ("pgd", {"eps": 0.1, "eps_iter": -0.01}, "eps_iter"),
    ("bim", {"nb_iter": 2.5}, "nb_iter"),
    ("spsa", {"spsa_samples": 7}, "must be even"),
    ("spsa", {"learning_rate": 0.0}, "learning_rate"),
    ("spsa", {"delta": -1.0}, "delta"),
    ("mim", {"decay_factor": -0.5}, "decay_factor"),
    ("deepfool", {}, "unknown attack"),
])
def test_invalid_parameters_raise_value_errors(name, params, match, cnn, fmnist_test):
    x, y = fmnist_test
    with pytest.raises(AttackConfigError, match=match) as info:
        attacks.run_attack(name, cnn, x[:2], y[:2], **params)
    assert isinstance(info.value, ValueError)
