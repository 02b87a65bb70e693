"""The one list of methods: every place that needs to know which methods exist reads it.

Each method is one :class:`MethodInfo` row of :data:`METHODS`. The interoperability suite and
the card-usage tests are parametrised over it, the benchmarks take their families from it,
``camegrad-rrg --optimizer`` offers its rows, and the README's method table is generated from it
(``python docs/generate.py``; a test fails while the table is stale).

Adding a method is one module ``camegrad_jax/_<name>.py`` (exported from ``camegrad_jax``), one
row here and its tests (``tests/test_<name>.py``). A row's fields:

* ``name``: the registry and CLI name (``camegrad-rrg --optimizer NAME``);
* ``factory``: the public factory; ``fixed`` keyword arguments the row always passes (ablations
  and variants of another row name it in ``variant_of``, and are left out of the method table);
* ``kind``: ``"gram"`` (coefficients from the K × K Gram matrix of the task gradients: works on
  the low-memory route :func:`camegrad_jax.gram_only_gradients`), ``"gradient"`` (needs the
  stacked gradients themselves, leaf by leaf or coordinate by coordinate), ``"loss"`` (weights
  from the loss values, or drawn at random: no gradient geometry) or ``"step"`` (a training step,
  not an optax transformation);
* ``inputs``: extra arguments its ``update`` needs (``"value"``: the K losses, as optax passes
  ``value``; ``"representation_grads"``);
* ``example_kwargs``: values for the factory's required arguments that a run supplies from its
  own setting (DWA's ``epoch_length``), used where a row is built without that setting;
* ``min_tasks``: the fewest tasks the method is defined for with its ``example_kwargs`` (Krum
  needs ``n_byzantine + 3``); the two-task suites and the two-task trainer leave out the rows
  above 2 (:func:`registered_methods` with ``task_count``), and the method's own tests run it;
* ``paper_hyper``: which of CAME-Grad's ``c``, ``gamma``, ``alpha`` the factory takes (the
  trainer's configuration passes only these);
* ``schedulable``: a numeric hyper-parameter and a valid value, for ``optax.inject_hyperparams``;
* ``title``, ``reference``, ``torchjd``, ``libmtl``, ``tested_against``: the method table.

Examples:
  >>> from camegrad_jax import method_info
  >>> info = method_info("cagrad")
  >>> info.kind, info.torchjd
  ('gram', 'CAGrad')
  >>> tx = info.build(c=0.4)  # the optax transformation, K read from the first gradients
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

import optax

from camegrad_jax._aligned_mtl import aligned_mtl
from camegrad_jax._cagrad import cagrad
from camegrad_jax._camegrad import camegrad
from camegrad_jax._config import config
from camegrad_jax._cr_mogm import cr_mogm
from camegrad_jax._db_mtl import db_mtl
from camegrad_jax._dualproj import dualproj
from camegrad_jax._dwa import dwa
from camegrad_jax._excess_mtl import excess_mtl
from camegrad_jax._fairgrad import fairgrad
from camegrad_jax._famo import famo
from camegrad_jax._geometric_mean import geometric_mean
from camegrad_jax._graddrop import graddrop
from camegrad_jax._gradnorm import gradnorm
from camegrad_jax._gradvac import gradvac
from camegrad_jax._imtl_g import imtl_g
from camegrad_jax._imtl_l import imtl_l
from camegrad_jax._krum import krum
from camegrad_jax._linear import linear_scalarization
from camegrad_jax._mgda import mgda
from camegrad_jax._mmpareto import mmpareto
from camegrad_jax._moco import moco
from camegrad_jax._modo import modo
from camegrad_jax._nash_mtl import nash_mtl
from camegrad_jax._pcd import pcd
from camegrad_jax._pcgrad import pcgrad
from camegrad_jax._rlw import rlw
from camegrad_jax._rotograd import rotograd_scaling
from camegrad_jax._scale_invariant import scale_invariant
from camegrad_jax._sdmgrad import sdmgrad
from camegrad_jax._stch import stch
from camegrad_jax._stgu import stgu
from camegrad_jax._trimmed_mean import trimmed_mean
from camegrad_jax._uncertainty_weighting import uncertainty_weighting
from camegrad_jax._upgrad import upgrad

Kind = Literal["gram", "gradient", "loss", "step"]
KINDS: tuple[str, ...] = ("gram", "gradient", "loss", "step")
# Extra `update` arguments the training loops of this project supply.
KNOWN_INPUTS: tuple[str, ...] = ("value", "representation_grads")
PAPER_HYPER: tuple[str, ...] = ("c", "gamma", "alpha")


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """One method of the registry (see the module docstring for the fields)."""

    name: str
    factory: Callable[..., Any]
    kind: Kind
    title: str = ""
    reference: str = ""
    inputs: tuple[str, ...] = ()
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    example_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    min_tasks: int = 1
    paper_hyper: tuple[str, ...] = ()
    schedulable: tuple[str, float] | None = None
    variant_of: str | None = None
    baseline: bool = False
    torchjd: str | None = None
    libmtl: str | None = None
    tested_against: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"`kind` should be one of {KINDS}. Found `kind = {self.kind!r}`.")
        unknown = [i for i in self.inputs if i not in KNOWN_INPUTS]
        if unknown:
            raise ValueError(f"`inputs` should be among {KNOWN_INPUTS}. Found {unknown}.")
        odd = [h for h in self.paper_hyper if h not in PAPER_HYPER]
        if odd:
            raise ValueError(f"`paper_hyper` should be among {PAPER_HYPER}. Found {odd}.")

    @property
    def needs_values(self) -> bool:
        """Whether ``update`` needs the loss values as ``value=losses``."""
        return "value" in self.inputs

    @property
    def is_transformation(self) -> bool:
        """Whether ``build`` returns an optax transformation (every kind but ``"step"``)."""
        return self.kind != "step"

    def build(self, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        """The factory called with the row's ``fixed`` arguments and ``kwargs``."""
        return self.factory(**self.fixed, **kwargs)


_TORCHJD_SUM = "`Sum`, `Mean`, `Constant`"
_CAMEGRAD_TITLE = "CAME-Grad (ICML 2026)"

METHODS: tuple[MethodInfo, ...] = (
    MethodInfo(
        "linear",
        linear_scalarization,
        "gram",
        title="linear scalarization",
        reference="weighted sum of the task gradients",
        baseline=True,
        torchjd=_TORCHJD_SUM,
        libmtl="EW",
        tested_against="NumPy sum",
    ),
    MethodInfo(
        "camegrad",
        camegrad,
        "gram",
        title=_CAMEGRAD_TITLE,
        reference="docs/algorithm.md",
        paper_hyper=PAPER_HYPER,
        schedulable=("alpha", 0.3),
        tested_against="exact enumeration of Stage 1's active sets, a cone program, "
        "boundary search (K = 2)",
    ),
    MethodInfo(
        "camegrad_no_s1",
        camegrad,
        "gram",
        title="CAME-Grad without Stage 1",
        fixed={"rectify": False},
        paper_hyper=PAPER_HYPER,
        variant_of="camegrad",
    ),
    MethodInfo(
        "camegrad_no_s2",
        camegrad,
        "gram",
        title="CAME-Grad without Stage 2",
        fixed={"enhance": False},
        paper_hyper=PAPER_HYPER,
        variant_of="camegrad",
    ),
    MethodInfo(
        "camegrad_no_s3",
        camegrad,
        "gram",
        title="CAME-Grad without Stage 3",
        fixed={"fuse": False},
        paper_hyper=PAPER_HYPER,
        variant_of="camegrad",
    ),
    MethodInfo(
        "camegrad_setting_b",
        camegrad,
        "gram",
        title="CAME-Grad, Setting B (noise enhancement)",
        fixed={"enhance": "noise"},
        paper_hyper=PAPER_HYPER,
        schedulable=("gamma", 1.2),
        variant_of="camegrad",
    ),
    MethodInfo(
        "cagrad",
        cagrad,
        "gram",
        title="CAGrad (NeurIPS 2021)",
        reference="https://arxiv.org/abs/2110.14048",
        paper_hyper=("c",),
        schedulable=("c", 0.4),
        torchjd="CAGrad",
        libmtl="CAGrad",
        tested_against="SciPy SLSQP dual + official rescaling",
    ),
    MethodInfo(
        "pcgrad",
        pcgrad,
        "gram",
        title="PCGrad (NeurIPS 2020)",
        reference="https://arxiv.org/abs/2001.06782",
        torchjd="PCGrad",
        libmtl="PCGrad",
        tested_against="hand-computed (K = 2), NumPy Algorithm 1",
    ),
    MethodInfo(
        "mgda",
        mgda,
        "gram",
        title="MGDA (NeurIPS 2018)",
        reference="https://arxiv.org/abs/1810.04650",
        schedulable=("solver_maxiter", 200),
        torchjd="MGDA",
        libmtl="MGDA",
        tested_against="brute force over the simplex (K = 2), SLSQP",
    ),
    MethodInfo(
        "imtl_g",
        imtl_g,
        "gram",
        title="IMTL-G (ICLR 2021)",
        reference="https://openreview.net/forum?id=IMPnRXEWpvr",
        torchjd="IMTLG",
        libmtl="IMTL (its gradient part)",
        tested_against="the paper's closed form",
    ),
    MethodInfo(
        "nash_mtl",
        nash_mtl,
        "gram",
        title="Nash-MTL (ICML 2022)",
        reference="https://arxiv.org/abs/2202.01017",
        schedulable=("max_norm", 1.0),
        torchjd="NashMTL",
        libmtl="Nash_MTL",
        tested_against="fixed point `Gα = 1/α`, `scipy.optimize.root`",
    ),
    MethodInfo(
        "aligned_mtl",
        aligned_mtl,
        "gram",
        title="Aligned-MTL (CVPR 2023)",
        reference="https://arxiv.org/abs/2305.19000",
        torchjd="AlignedMTL",
        libmtl="Aligned_MTL",
        tested_against="NumPy SVD",
    ),
    MethodInfo(
        "upgrad",
        upgrad,
        "gram",
        title="UPGrad (2024)",
        reference="https://arxiv.org/abs/2406.16232",
        torchjd="UPGrad",
        tested_against="`scipy.optimize.nnls` projections",
    ),
    MethodInfo(
        "fairgrad",
        fairgrad,
        "gram",
        title="FairGrad (ICML 2024)",
        reference="https://arxiv.org/abs/2402.15638",
        schedulable=("alpha", 2.0),
        libmtl="FairGrad",
        tested_against="the official `scipy.optimize.least_squares` solve of `Gw = w^(-1/α)`",
    ),
    MethodInfo(
        "sdmgrad",
        sdmgrad,
        "gram",
        title="SDMGrad (NeurIPS 2023)",
        reference="https://arxiv.org/abs/2305.18409",
        schedulable=("lamda", 0.3),
        libmtl="SDMGrad",
        tested_against="the official projected heavy-ball steps in NumPy, SLSQP at convergence",
    ),
    MethodInfo(
        "modo",
        modo,
        "gram",
        title="MoDo (NeurIPS 2023)",
        reference="https://arxiv.org/abs/2305.20057",
        schedulable=("gamma", 0.1),
        libmtl="MoDo",
        tested_against="the official λ step in NumPy, with one sample and with two",
    ),
    MethodInfo(
        "excess_mtl",
        excess_mtl,
        "gradient",
        title="ExcessMTL (ICML 2024)",
        reference="https://arxiv.org/abs/2402.02009",
        schedulable=("robust_step_size", 0.5),
        libmtl="ExcessMTL",
        tested_against="the official weighting step in NumPy",
    ),
    MethodInfo(
        "dualproj",
        dualproj,
        "gram",
        title="DualProj (GEM's projection, NeurIPS 2017)",
        reference="https://arxiv.org/abs/1706.08840",
        torchjd="DualProj",
        tested_against="`scipy.optimize.nnls` projection; torchjd's values from its regularised QP",
    ),
    MethodInfo(
        "config",
        config,
        "gram",
        title="ConFIG (ICLR 2025)",
        reference="https://arxiv.org/abs/2408.11104",
        torchjd="ConFIG",
        tested_against="the official least-squares and two-task updates in NumPy",
    ),
    MethodInfo(
        "gradvac",
        gradvac,
        "gram",
        title="GradVac (ICLR 2021)",
        reference="https://openreview.net/forum?id=F1vEjWK-lH_",
        schedulable=("beta", 0.1),
        libmtl="GradVac",
        tested_against="Algorithm 1 in NumPy over steps, per model, layer and user group",
    ),
    MethodInfo(
        "krum",
        krum,
        "gram",
        title="Krum / Multi-Krum (NeurIPS 2017)",
        reference="https://proceedings.neurips.cc/paper/2017/hash/"
        "f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html",
        example_kwargs={"n_byzantine": 0},
        min_tasks=3,
        torchjd="Krum",
        tested_against="the paper's rule in NumPy",
    ),
    MethodInfo(
        "trimmed_mean",
        trimmed_mean,
        "gradient",
        title="Trimmed mean (ICML 2018)",
        reference="https://proceedings.mlr.press/v80/yin18a.html",
        example_kwargs={"trim_number": 0},
        torchjd="TrimmedMean",
        tested_against="NumPy's sort, coordinate by coordinate",
    ),
    MethodInfo(
        "graddrop",
        graddrop,
        "gradient",
        title="GradDrop (NeurIPS 2020)",
        reference="https://arxiv.org/abs/2010.06808",
        schedulable=("leak", 0.2),
        torchjd="GradDrop",
        libmtl="GradDrop",
        tested_against="Algorithm 1 in NumPy with the key schedule's draws",
    ),
    MethodInfo(
        "cr_mogm",
        cr_mogm,
        "gram",
        title="CR-MOGM over MGDA (NeurIPS 2022)",
        reference="https://proceedings.neurips.cc/paper_files/paper/2022/file/"
        "f91bd64a3620aad8e70a27ad9cb3ca57-Paper-Conference.pdf",
        schedulable=("alpha", 0.9),
        torchjd="`CRMOGMWeighting`",
        tested_against="moving average of SciPy SLSQP min-norm weights",
    ),
    MethodInfo(
        "pcd",
        pcd,
        "gram",
        title="PCD (TMLR 2026)",
        reference="https://openreview.net/forum?id=HT01yGHLEt",
        schedulable=("tau", 0.02),
        torchjd="PCD",
        tested_against="torchjd's fixed values, the two-task closed form, SciPy SLSQP",
    ),
    MethodInfo(
        "mmpareto",
        mmpareto,
        "gradient",
        title="MMPareto (ICML 2024)",
        reference="https://arxiv.org/abs/2405.17730",
        schedulable=("gamma", 1.5),
        tested_against="the official training step in NumPy",
    ),
    MethodInfo(
        "db_mtl",
        db_mtl,
        "gradient",
        title="DB-MTL (2023)",
        reference="https://arxiv.org/abs/2308.12029",
        inputs=("value",),
        schedulable=("beta", 0.9),
        libmtl="DB_MTL",
        tested_against="LibMTL's `DB_MTL` in NumPy",
    ),
    MethodInfo(
        "moco",
        moco,
        "gradient",
        title="MoCo (ICLR 2023)",
        reference="https://openreview.net/forum?id=dLAYGdKTi2",
        inputs=("value",),
        schedulable=("gamma", 0.1),
        libmtl="MoCo",
        tested_against="LibMTL's `MoCo` and the paper's Algorithm 1 in NumPy",
    ),
    MethodInfo(
        "uncertainty_weighting",
        uncertainty_weighting,
        "loss",
        title="Uncertainty weighting (CVPR 2018)",
        reference="https://arxiv.org/abs/1705.07115",
        inputs=("value",),
        schedulable=("learning_rate", 0.05),
        torchjd="`UW` (scalarization)",
        libmtl="UW",
        tested_against="NumPy gradient descent on the UW objective",
    ),
    MethodInfo(
        "gradnorm",
        gradnorm,
        "loss",
        title="GradNorm (ICML 2018)",
        reference="https://arxiv.org/abs/1711.02257",
        inputs=("value",),
        schedulable=("alpha", 1.5),
        libmtl="GradNorm",
        tested_against="the paper's Algorithm 1, autodiff of the GradNorm loss",
    ),
    MethodInfo(
        "famo",
        famo,
        "loss",
        title="FAMO (NeurIPS 2023)",
        reference="https://arxiv.org/abs/2306.03792",
        inputs=("value",),
        schedulable=("learning_rate", 0.025),
        torchjd="`FAMO` (scalarization)",
        tested_against="the official update rule in NumPy",
    ),
    MethodInfo(
        "dwa",
        dwa,
        "loss",
        title="DWA (CVPR 2019)",
        reference="https://arxiv.org/abs/1803.10704",
        inputs=("value",),
        example_kwargs={"epoch_length": 3},
        schedulable=("temperature", 2.0),
        torchjd="`DWA` (scalarization)",
        libmtl="DWA",
        tested_against="MTAN's rule",
    ),
    MethodInfo(
        "rlw",
        rlw,
        "loss",
        title="RLW (TMLR 2022)",
        reference="https://arxiv.org/abs/2111.10603",
        torchjd="Random",
        libmtl="RLW",
        tested_against="key schedule and draw statistics",
    ),
    MethodInfo(
        "imtl_l",
        imtl_l,
        "loss",
        title="IMTL-L (ICLR 2021)",
        reference="https://openreview.net/forum?id=IMPnRXEWpvr",
        inputs=("value",),
        schedulable=("learning_rate", 0.05),
        torchjd="`IMTLL` (scalarization)",
        libmtl="IMTL (its loss part)",
        tested_against="finite differences of Σ e^s L − s, torchjd's fixed values",
    ),
    MethodInfo(
        "geometric_mean",
        geometric_mean,
        "loss",
        title="GLS, geometric mean of the losses (CVPRW 2019)",
        reference="https://openaccess.thecvf.com/content_CVPRW_2019/papers/WAD/Chennupati_MultiNet_Multi-Stream_Feature_Aggregation_and_Geometric_Loss_Strategy_for_Multi-Task_CVPRW_2019_paper.pdf",
        inputs=("value",),
        torchjd="`GeometricMean` (scalarization)",
        libmtl="GLS",
        tested_against="finite differences of (Π L)^{1/K}, torchjd's fixed value",
    ),
    MethodInfo(
        "stch",
        stch,
        "loss",
        title="STCH, smooth Tchebycheff (ICML 2024)",
        reference="https://arxiv.org/abs/2402.19078",
        inputs=("value",),
        schedulable=("mu", 0.5),
        torchjd="`STCH` (scalarization)",
        libmtl="STCH",
        tested_against=(
            "finite differences of torchjd's and the official loss, torchjd's fixed values"
        ),
    ),
    MethodInfo(
        "scale_invariant",
        scale_invariant,
        "loss",
        title="Scale-invariant, Σ log L (ICML 2022)",
        reference="https://arxiv.org/abs/2202.01017",
        inputs=("value",),
        tested_against="finite differences of Σ λ log L",
    ),
    MethodInfo(
        "rotograd_scaling",
        rotograd_scaling,
        "gradient",
        title="RotoGrad (ICLR 2022), with the `RotoGrad` NNX module",
        reference="https://arxiv.org/abs/2103.02631",
        inputs=("representation_grads",),
        tested_against="SciPy `expm_frechet` for the rotation loss",
    ),
    MethodInfo(
        "stgu",
        stgu,
        "step",
        title="STGU (ICLR 2025), as a training step `stgu(loss_fn, optimizer).step`",
        reference="https://arxiv.org/abs/2502.11986",
        tested_against="the official training loop and scikit-learn's affinity propagation, "
        "transcribed in NumPy",
    ),
)

_BY_NAME = {info.name: info for info in METHODS}
if len(_BY_NAME) != len(METHODS):
    raise RuntimeError("Two registry rows share a name.")


def method_info(name: str) -> MethodInfo:
    """The registry row called ``name``.

    Raises:
      ValueError: naming the unknown method and listing the known ones.
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"`name` should be a registered method, one of {tuple(_BY_NAME)}. Found "
            f"`name = {name!r}`."
        ) from None


def registered_methods(
    *,
    kinds: tuple[str, ...] = KINDS,
    inputs: tuple[str, ...] = KNOWN_INPUTS,
    variants: bool = True,
    task_count: int | None = None,
) -> tuple[MethodInfo, ...]:
    """The rows of the given kinds whose update needs no input outside ``inputs``.

    Args:
      kinds: the kinds to keep (default all).
      inputs: the extra ``update`` arguments the caller can supply (default all known); e.g.
        ``("value",)`` for a loop that passes ``value=losses`` and nothing else.
      variants: whether to keep ablations and variants of another row.
      task_count: keep only the rows defined for this many tasks (``min_tasks ≤ task_count``);
        None keeps every row. (Not ``num_tasks``: that name marks a method factory.)
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"`kinds` should be among {KINDS}. Found {bad}.")
    return tuple(
        info
        for info in METHODS
        if info.kind in kinds
        and set(info.inputs) <= set(inputs)
        and (variants or info.variant_of is None)
        and (task_count is None or info.min_tasks <= task_count)
    )
