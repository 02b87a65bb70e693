"""The hyper-parameter checks: their messages name the argument and the value, traced values
give verdicts instead of raising, and the task count is resolved from `num_tasks` and weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from camegrad_jax import _validation


@pytest.mark.parametrize(
    ("check", "value", "error", "match"),
    [
        (_validation.check_non_negative, -1.0, ValueError, "`c` should be a finite non-negative"),
        (_validation.check_non_negative, float("nan"), ValueError, "Found `c = nan`"),
        (_validation.check_positive, 0.0, ValueError, "`c` should be a finite positive"),
        (_validation.check_unit_interval, 1.5, ValueError, r"`c` should be a float in \[0, 1\]"),
        (_validation.check_positive_int, 2.5, ValueError, "`c` should be a positive integer"),
        (_validation.check_non_negative_int, -1, ValueError, "Found `c = -1`"),
        (_validation.check_positive, True, TypeError, "of type bool"),
        (_validation.check_positive, "1", TypeError, "of type str"),
        (_validation.check_positive, jnp.array([1.0]), TypeError, "`c` should be"),
    ],
)
def test_bad_values_are_refused_by_name(check, value, error, match):
    with pytest.raises(error, match=match):
        check(value, "c")


def test_good_values_pass_and_traced_values_give_verdicts():
    assert _validation.check_positive(np.float32(0.5), "c") is True
    assert _validation.check_positive_int(jnp.array(3), "k") is True

    @jax.jit
    def verdicts(value):
        return _validation.all_valid(
            _validation.check_non_negative(value, "c"), _validation.check_unit_interval(value, "c")
        )

    assert bool(verdicts(0.5))
    assert not bool(verdicts(-0.5))
    assert not bool(verdicts(2.0))
    assert _validation.all_valid(True, True) is True


def test_check_choice_and_task_weights():
    _validation.check_choice("apg", ("apg", "jaxopt"), "solver")
    with pytest.raises(ValueError, match="`solver` should be one of"):
        _validation.check_choice("newton", ("apg", "jaxopt"), "solver")
    _validation.check_task_weights([1.0, 2.0])
    with pytest.raises(ValueError, match="non-empty 1-D sequence"):
        _validation.check_task_weights([[1.0, 2.0]])
    with pytest.raises(ValueError, match="finite positive floats"):
        _validation.check_task_weights([1.0, 0.0])


def test_num_tasks_is_resolved_from_either_argument_and_checked_for_agreement():
    assert _validation.resolve_num_tasks(None, None) is None
    assert _validation.resolve_num_tasks(None, [1.0, 2.0, 3.0]) == 3
    assert _validation.resolve_num_tasks(jnp.array(2), None) == 2
    with pytest.raises(ValueError, match="has 2 entries but `num_tasks = 3`"):
        _validation.resolve_num_tasks(3, [1.0, 1.0])
    np.testing.assert_array_equal(_validation.weights_vector(None, 2, jnp.float32), [1.0, 1.0])
    with pytest.raises(ValueError, match="task axis of size K = 3"):
        _validation.weights_vector([1.0, 2.0], 3, jnp.float32)
