"""Ctrl-C that loses nothing.

Tune's own SIGINT handler ends the run at once: the iteration each trial was training is lost and the
driver used to print the final table as if the search had finished. Here the first SIGINT (or SIGTERM)
lets every running trial reach its next report (and checkpoint), then asks Tune to stop the way its own
handler does (SIGUSR1: Tune saves the experiment state and leaves unfinished trials to `--resume`).
A second signal exits at once; Ray's processes die with the driver (they share its fate on Linux).

On `--resume` it also guards against Tune's silent fallback: when Tune cannot read the state it is asked
to resume, it logs the error and starts the experiment again from nothing (every trial anew, under the
same numbers, with a config that lacks the trial settings, since `tuner.pkl` keeps no parameter space:
the `KeyError: 'trial'` of issue 18). `resume_check` refuses such state first; should Tune still fall
back, the first step sees none of the trials the signed state holds, and the resume stops there.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from himari_ray.types import SearchFailed


class GracefulInterrupt:
    """Install with `install()` before `Tuner.fit()`; `callback()` goes into the run's callbacks."""

    def __init__(self, out: str, stream: TextIO | None = None, resumed: Iterable[str] = ()):
        self.out = out
        self._stream = stream
        self.resumed = frozenset(resumed)  # on --resume: the trial ids Tune's signed state holds
        self.requested = False
        self._waiting: set[str] | None = None
        self._stop_sent = False
        self._previous: dict[int, Any] = {}

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr  # looked up when printing: tests and tools replace sys.stderr

    def __reduce__(self) -> tuple:
        # Tune pickles its callbacks (tune/tuner.pkl): a fresh, uninstalled handler is all that may travel.
        return (GracefulInterrupt, (self.out,))

    def install(self) -> None:
        # Tune reads this when fit() starts: our handler, not Tune's, owns SIGINT.
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            print(f"interrupted again: exiting now; resume with: himari-ray search --resume {self.out}",
                  file=self.stream, flush=True)  # fmt: skip
            os._exit(130)
        self.requested = True
        print(
            "interrupt: stopping each running trial at its next report (press Ctrl-C again to exit now)",
            file=self.stream,
            flush=True,
        )

    def _check_restored(self, iteration: int, trials: list[Any]) -> None:
        """On the first step of a resume: Tune must hold the trials it was asked to resume."""
        if not self.resumed or iteration > 0 or {t.trial_id for t in trials} & self.resumed:
            self.resumed = frozenset()  # checked once
            return
        # Nothing has run yet and the study must stay as it is, resumable: as after an interrupt.
        self.requested = True
        raise SearchFailed(
            f"{self.out}: Tune could not restore the search's state and would have started it again from scratch; "
            "nothing was run"
        )

    def _maybe_stop(self, trials: list[Any]) -> None:
        if not self.requested or self._stop_sent:
            return
        if self._waiting is None:
            self._waiting = {t.trial_id for t in trials if t.status == "RUNNING"}
        if not self._waiting:
            self._stop_sent = True
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop: saves state, keeps trials resumable

    def callback(self) -> Any:
        from ray import tune

        owner = self

        class StopAtNextReport(tune.Callback):
            def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
                owner._check_restored(iteration, trials)

            def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
                owner._maybe_stop(trials)

            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                if owner._waiting is not None:
                    owner._waiting.discard(trial.trial_id)

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                if owner._waiting is not None:
                    owner._waiting.discard(trial.trial_id)

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                if owner._waiting is not None:
                    owner._waiting.discard(trial.trial_id)

        return StopAtNextReport()
