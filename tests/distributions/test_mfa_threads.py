"""EM for MFA / MPPCA does not depend on the thread count, and says clearly when it cannot go on.

* The statistics and parameters of EM passes agree across 1, 2 and 4 torch threads, on
  data shaped like `mfa_mnist_record` with l=150 (l large against d: the M-step's SPD
  systems are 151 x 151, the size at which a batched LU inverse broke at two threads).
  Each thread count runs in its own process (this file is also the worker).
* A NaN or inf statistic, or an M-step system that is not positive definite, is one
  GmlabError naming the component (and, through MFAModel, the EM pass) before any solve.
* Float32 EM on degenerate data (constant columns, duplicated rows) stays finite and
  follows float64 EM; its densities match torch.distributions.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from support.em import stats_of

from gmlab.distributions.mfa import MixtureOfFactorAnalyzers, e_step, init_rnd_samples, m_step
from gmlab.errors import NonFiniteError, SingularCovarianceError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py; workers set their own

STATS = ("s0", "s1", "s2", "t", "log_lik")
K, D, L, N = 2, 196, 150, 800


def thread_case_data() -> torch.Tensor:
    """[N, D] float32: two low-rank clusters in 196 dims, 30 constant 'border' columns."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(N, 20, generator=g)
    x = z @ torch.randn(20, D, generator=g) + 0.3 * torch.randn(N, D, generator=g)
    x[N // 2 :] += 2.0 * torch.randn(D, generator=g)
    x[:, :30] = -9.2  # the logit of a blank pixel
    return x


def run_passes(noise: str, passes: int = 2) -> dict[str, torch.Tensor]:
    """Float32 EM from a seeded init: every pass's statistics and the final parameters."""
    x = thread_case_data()
    m = MixtureOfFactorAnalyzers(K, D, L, noise)
    m.set_params(**init_rnd_samples(x, K, L, noise_floor=1e-4, seed=0))
    out = {}
    for p in range(passes):
        gauss, st = stats_of(m, x, batch=300)
        out.update({f"pass{p}.{name}": getattr(st, name).clone() for name in STATS})
        new = m_step(st, gauss, noise, noise_floor=1e-4)
        new.pop("reseeded")
        m.set_params(**new)
    out.update({f"param.{k}": v.detach().clone() for k, v in m.state_dict().items()})
    return out


@pytest.fixture(scope="module")
def thread_runs(tmp_path_factory) -> dict[int, dict[str, torch.Tensor]]:
    """{threads: {"<noise>/<key>": tensor}} from one worker process per thread count (run
    side by side; a worker only imports torch and gmlab.distributions)."""
    folder = tmp_path_factory.mktemp("threads")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # for `support`
    procs = {}
    for threads in (1, 2, 4):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH")]))
        cmd = [sys.executable, __file__, str(threads), str(folder / f"{threads}.pt")]
        procs[threads] = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    runs = {}
    for threads, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=300)  # a stalled solve fails here, not forever
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0 and "MKL" not in err, f"{threads} threads: {err[-3000:]}"
        runs[threads] = torch.load(folder / f"{threads}.pt", weights_only=True)
    return runs


@pytest.mark.slow  # three worker processes importing torch: ~8 s on 2 idle cores, 60 s loaded
@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_em_statistics_and_parameters_agree_across_1_2_and_4_threads(thread_runs, noise):
    ref = {k.split("/", 1)[1]: v for k, v in thread_runs[1].items() if k.startswith(noise)}
    assert set(ref) == {f"pass{p}.{s}" for p in (0, 1) for s in STATS} | {
        "param.means",
        "param.factors",
        "param.log_noise",
        "param.logits",
    }
    for threads in (2, 4):
        for key, want in ref.items():
            got = thread_runs[threads][f"{noise}/{key}"]
            assert torch.isfinite(got).all(), (threads, key)
            # float32 E-step sums: only their rounding may depend on the thread count
            scale = float(want.abs().max().clamp_min(1e-30))
            torch.testing.assert_close(
                got, want, rtol=1e-4, atol=1e-5 * scale, msg=f"{threads} threads: {key}"
            )


# ------------------------------------------------------- clear errors, no solve
def small_case(noise: str = "diagonal"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64)
    m = MixtureOfFactorAnalyzers(3, 8, 2, noise).to(torch.float64)
    m.set_params(**init_rnd_samples(x, 3, 2, seed=0))
    gauss, st = stats_of(m, x)
    return m, gauss, st


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_a_nan_or_inf_statistic_names_its_components_before_any_solve(monkeypatch, noise):
    _, gauss, st = small_case(noise)
    st.t[1, 5, 0] = float("nan")
    st.s2[2, 0] = float("inf")

    def no_solve(*args, **kwargs):
        raise AssertionError("solved a system with non-finite statistics")

    monkeypatch.setattr(torch.linalg, "cholesky_ex", no_solve)
    with pytest.raises(NonFiniteError, match=r"statistics of component 1, 2 \(2 of 3\)"):
        m_step(st, gauss, noise)


def test_an_m_step_system_that_is_not_positive_definite_is_named():
    """sum_n r E[z z^T] of component 1 made negative definite through its t statistic."""
    _, gauss, st = small_case()
    st.t[1] = -1e6 * gauss.proj[1]
    with pytest.raises(SingularCovarianceError, match=r"component 1 \(1 of 3\) not positive"):
        m_step(st, gauss, "diagonal")


def test_the_model_names_the_em_pass_of_a_non_finite_statistic(monkeypatch):
    """A NaN statistic in the second pass (epoch 1): the error names pass and component."""
    # imported here: the thread workers run this file and need only gmlab.distributions
    from support.trainer import quiet_trainer

    import gmlab.models.mfa as model_module
    from gmlab.estimators.mfa import _TensorDataModule
    from gmlab.models.mfa import MFAModel

    calls = []

    def poisoned_e_step(x, gauss, log_weights, stats, **kw):
        ll = e_step(x, gauss, log_weights, stats, **kw)
        calls.append(len(x))
        if len(calls) > 2:  # two batches per pass
            stats.s1[2, 0] = float("nan")
        return ll

    monkeypatch.setattr(model_module, "e_step", poisoned_e_step)
    x = torch.randn(240, 6, generator=torch.Generator().manual_seed(0))
    model = MFAModel([6], n_components=3, n_factors=2, init="rnd_samples", noise_floor=1e-4)
    trainer = quiet_trainer(max_epochs=3, limit_val_batches=0, use_distributed_sampler=False)
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(model, datamodule=_TensorDataModule(x, batch_size=120))
    msg = str(err.value)
    assert calls == [120] * 4
    assert msg.startswith("M-step of EM pass 2 (epoch 1): the EM statistics of component 2 (1")
    assert "model.noise_floor" in msg and "MKL" not in msg


# -------------------------------------------------------- degenerate data, float32
def degenerate_data() -> torch.Tensor:
    """[400, 12]: 40 distinct rows, each repeated 10 times; two constant columns."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64) @ torch.randn(
        12, 12, generator=g, dtype=torch.float64
    )
    x = x.repeat(10, 1)
    x[:, 3] = 0.7
    x[:, 9] = -4.0
    return x


def em_history(x: torch.Tensor, noise: str, dtype: torch.dtype, passes: int = 6):
    m = MixtureOfFactorAnalyzers(3, x.shape[1], 2, noise).to(dtype)
    m.set_params(**init_rnd_samples(x, 3, 2, noise_floor=1e-6, seed=0))
    history = []
    for _ in range(passes):
        gauss, st = stats_of(m, x.to(dtype))
        history.append(float(st.log_lik) / len(x))
        new = m_step(st, gauss, noise, noise_floor=1e-6)
        new.pop("reseeded")
        m.set_params(**new)
    return m, torch.tensor(history, dtype=torch.float64)


def mixture_reference(m: MixtureOfFactorAnalyzers, x: torch.Tensor) -> torch.Tensor:
    """[N] log p(x) from torch.distributions (dense float64 covariances)."""
    f64 = {k: v.detach().to(torch.float64) for k, v in m.state_dict().items()}
    var = torch.exp(f64["log_noise"]).expand(m.n_components, m.dim)
    cov = f64["factors"] @ f64["factors"].mT + torch.diag_embed(var)
    comps = torch.distributions.MultivariateNormal(f64["means"], covariance_matrix=cov)
    mix = torch.distributions.Categorical(logits=f64["logits"])
    return torch.distributions.MixtureSameFamily(mix, comps).log_prob(x)


@pytest.mark.parametrize("noise", ["diagonal", "isotropic"])
def test_float32_em_on_constant_columns_and_duplicated_rows_follows_float64(noise):
    x = degenerate_data()
    m32, h32 = em_history(x, noise, torch.float32)
    m64, h64 = em_history(x, noise, torch.float64)
    assert torch.isfinite(h32).all() and all(p.isfinite().all() for p in m32.parameters())
    torch.testing.assert_close(h32, h64, rtol=1e-4, atol=1e-3)
    assert (h32[1:] >= h32[:-1] - 1e-3 * h32.abs().max()).all()  # EM does not go down
    if noise == "diagonal":  # the constant columns sit at the noise floor
        torch.testing.assert_close(
            m32.noise_variance[:, [3, 9]], torch.full((3, 2), 1e-6), rtol=1e-3, atol=0
        )
    ll32 = m32.log_prob(x.float()).double()
    torch.testing.assert_close(ll32, mixture_reference(m32, x), rtol=1e-4, atol=1e-2)


if __name__ == "__main__":  # worker: python test_mfa_threads.py <threads> <out.pt>
    torch.set_num_threads(int(sys.argv[1]))
    results = {}
    for noise in ("diagonal", "isotropic"):
        results.update({f"{noise}/{k}": v for k, v in run_passes(noise).items()})
    torch.save(results, sys.argv[2])
