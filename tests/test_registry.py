"""The method registry is the one list: the README table, the method guide, the test suites, the
benchmarks and the CLI are all read from it, and no public method factory is missing from it."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
from method_registry import METHODS as SUITE_METHODS

import camegrad_jax as cg
from camegrad_jax.rrg.compare_plan import CAMEGRAD_FAMILY
from camegrad_jax.rrg.optim import MULTITASK_METHODS

ROOT = Path(__file__).resolve().parent.parent


def _benchmark_family():
    spec = importlib.util.spec_from_file_location(
        "run_benchmarks", ROOT / "benchmarks" / "run_benchmarks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FAMILY


def _generate():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "docs" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    return generate


def test_readme_method_table_is_generated_from_the_registry():
    readme = (ROOT / "README.md").read_text()
    assert _generate().readme_with_table(readme) == readme, "run `python docs/generate.py`"
    for info in cg.registered_methods(variants=False):
        assert f"`{info.factory.__name__}`" in readme


def test_method_guide_is_generated_from_the_registry():
    generate = _generate()
    guide = generate.METHOD_GUIDE.read_text()
    assert generate.method_guide() == guide, "run `python docs/generate.py`"
    for info in cg.registered_methods():
        assert f"`{info.name}`" in guide


def test_every_public_method_factory_is_registered():
    # A method factory is a public callable that sizes per-task state: it takes `num_tasks`
    # (the generic builder aside).
    factories = {
        name
        for name in set(cg.__all__) - {"stacked_gradient_transformation"}
        if inspect.isfunction(getattr(cg, name))
        and "num_tasks" in inspect.signature(getattr(cg, name)).parameters
    }
    registered = {info.factory.__name__ for info in cg.METHODS}
    assert factories - registered == set()
    assert registered <= set(cg.__all__)


@pytest.mark.parametrize("info", cg.METHODS, ids=lambda info: info.name)
def test_row_is_consistent_with_its_factory(info):
    parameters = inspect.signature(info.factory).parameters
    for name in (*info.fixed, *info.paper_hyper):
        assert name in parameters, f"{info.name}: {name!r} is not a parameter of its factory"
    if info.schedulable is not None:
        assert info.schedulable[0] in parameters
    if info.variant_of is not None:
        assert cg.method_info(info.variant_of).factory is info.factory
    if info.is_transformation:
        tx = info.build(**info.example_kwargs)  # builds without the number of tasks
        assert callable(tx.init) and callable(tx.update)


def test_the_suites_the_cli_and_the_benchmarks_read_the_registry():
    runnable = cg.registered_methods(
        kinds=("gram", "gradient", "loss"), inputs=("value",), task_count=2
    )
    assert {info.name for info in runnable} <= {m.name for m in SUITE_METHODS}
    assert set(MULTITASK_METHODS) >= {info.name for info in runnable}
    family = _benchmark_family()
    assert set(family) == {
        info.name
        for info in cg.registered_methods(kinds=("gram", "gradient"), inputs=(), variants=False)
        if not info.baseline
    }
    assert set(CAMEGRAD_FAMILY) == {"camegrad"} | {
        info.name for info in cg.METHODS if info.variant_of == "camegrad"
    }


def test_lookup_and_filters_refuse_unknown_names():
    with pytest.raises(ValueError, match="`name` should be a registered method.*'adamw'"):
        cg.method_info("adamw")
    with pytest.raises(ValueError, match="`kinds` should be among"):
        cg.registered_methods(kinds=("gramm",))
    with pytest.raises(ValueError, match="`kind` should be one of"):
        cg.MethodInfo("x", cg.linear_scalarization, "weird")
    with pytest.raises(ValueError, match="`inputs` should be among"):
        cg.MethodInfo("x", cg.linear_scalarization, "loss", inputs=("labels",))
