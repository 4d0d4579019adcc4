"""Signals that end a run without losing it: SIGTERM, SIGINT, SIGUSR1 and SIGUSR2.

`scancel`, `docker stop`, `scontrol requeue` and preemption send SIGTERM; Ctrl-C sends
SIGINT; SLURM's `--signal` sends SIGUSR1 / SIGUSR2 before a time limit. While a run is
recorded (`gmlab.utils.sweep.run_recorded`) `GUARD` owns all four:

- inside training (`GUARD.deferred`, set by `gmlab.callbacks.checkpointing.SaveOnSignal`)
  a signal is held until the current step or validation batch ends; then `last.ckpt` is
  written (atomically) and `Interrupted` ends the run;
- elsewhere (building, testing) `Interrupted` is raised at once: no weights change there;
- the run records `status: interrupted` with the signal's name and exits with status
  128 + signal number (143 for SIGTERM, 130 for SIGINT), the shell's convention;
- a second signal while one is held ends the run at once (without a new `last.ckpt`).

Who owns which signal, so that they do not fight:

- between the jobs of a multirun run in this process (Hydra's basic launcher),
  `gmlab.utils.sweep.SweepSummary.ended_by` owns all four and ends the launch with its
  summary; `GUARD`, installed over it for each job, hands a job's signal on to it
  (`pass_on`).

- Lightning's SLURM handler (`SLURMEnvironment(auto_requeue=True)`) installs its SIGUSR1
  requeue only where no handler exists; gmlab's is installed first, so Lightning never
  requeues by itself. Lightning's SIGTERM notifier is composed with gmlab's handler (both run:
  Lightning ends the loop with `SIGTERMException`, gmlab saves and records first).
- submitit's job environment binds SIGUSR2 (its `--signal` before the time limit) to its
  checkpoint-and-requeue and only logs SIGTERM. gmlab takes both while the run lasts and,
  after saving and recording, hands SIGUSR2 on to submitit's handler (`pass_on`), which
  requeues the job; the requeued job resumes from `last.ckpt`. Under `scontrol requeue`
  (SIGTERM) submitit saves nothing, so gmlab's own save is what the requeued job resumes from.
  A submitit job on SLURM that is requeued (anything but `scancel`) ends without a result
  (exit 128 + signum), so that submitit's launcher waits for the requeued run
  (`gmlab.utils.sweep._slurm_runs_it_again`).
"""

from __future__ import annotations

import signal
import threading

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: not an error
    """A run ended by a signal. A `BaseException`, so that no `except Exception` on the
    way (Hydra's instantiate, a data loader) turns it into an ordinary failure."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """Handlers for `HANDLED` that turn a signal into `Interrupted` at a safe point."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.deferred = False
        self._previous: dict[int, object] = {}

    def install(self) -> bool:
        """Take the signals (main thread only; idempotent); False where it cannot."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self.received, self.deferred = None, False
        for signum in HANDLED:
            current = signal.getsignal(signum)
            if current != self._handle:
                self._previous[signum] = current
                signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        """Give the signals back to the handlers they had before `install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self.deferred = False

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = signum
        if self.deferred and first:
            return
        self.deferred = False  # not at a safe point: nothing may be saved on the way out
        raise Interrupted(self.received)

    def check(self) -> None:
        """Raise `Interrupted` if a signal came while held (call at a safe point)."""
        if self.received is not None:
            raise Interrupted(self.received)

    def pass_on(self) -> None:
        """Call the handler the received signal had before `install` (submitit's
        requeue for SIGUSR2, or the launch's `SweepSummary.ended_by`), if it was a Python
        function; it may exit the process."""
        previous = self._previous.get(self.received) if self.received else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(self.received, None)


GUARD = SignalGuard()
