"""`ResumableOptunaSweeper`: hydra-optuna-sweeper's sweeper whose `n_trials` is the total of
a stored study, so that a killed study relaunched with the same command continues up to
`n_trials` and reuses its finished trials (`gmlab.utils.optuna_study`). Hydra loads
sweepers from the `hydra_plugins` namespace only; conf/hparams_search selects this one."""

from __future__ import annotations

from pathlib import Path

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the `sweeps` extra is not installed
    OptunaSweeper = None

if OptunaSweeper is not None:

    class ResumableOptunaSweeper(OptunaSweeper):
        def sweep(self, arguments: list[str]) -> None:
            from gmlab.utils.optuna_study import resume_study

            impl = self.sweeper
            if impl.storage:
                if str(impl.storage).startswith("sqlite:///"):
                    Path(str(impl.storage)[len("sqlite:///") :]).parent.mkdir(
                        parents=True, exist_ok=True
                    )
                impl.n_trials, resumed = resume_study(impl.storage, impl.study_name, impl.n_trials)
                if resumed and hasattr(impl.sampler, "reseed_rng"):
                    impl.sampler.reseed_rng()
            return super().sweep(arguments)
