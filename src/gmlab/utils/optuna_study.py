"""Optuna studies that survive a kill and a relaunch.

The study lives in the sweep folder (`storage: sqlite:///${hydra.sweep.dir}/optuna.db`,
conf/hparams_search). Before a launch continues a stored study, `resume_study`:

- marks each trial still `RUNNING` (its process was killed or interrupted) as failed with
  the user attribute `gmlab_interrupted`, and enqueues its parameters again: the next trial
  asked runs them, lands in the job folder of the same overrides and resumes from its
  `last.ckpt` (`gmlab.utils.sweep`);
- counts the trials done: complete, pruned, and failed ones other than those interrupted;
- returns how many are left of `n_trials`, which so means the study's total, and whether
  the study had trials: a relaunch then reseeds the sampler (`reseed_rng`), which would
  otherwise draw the first launch's parameters again (a seeded sampler starts over).
"""

from __future__ import annotations

INTERRUPTED = "gmlab_interrupted"


def resume_study(storage: str, study_name: str, n_trials: int) -> tuple[int, bool]:
    """Prepare the stored study `study_name` for another launch: (trials still to run,
    whether it had trials)."""
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # no such study yet
        return n_trials, False
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params)
    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False, states=ended)
    done = sum(not t.user_attrs.get(INTERRUPTED) for t in trials)
    return max(n_trials - done, 0), bool(study.get_trials(deepcopy=False))
