"""Stop signals: what SIGTERM and SIGUSR1 do to a ``ptft finetune`` or ``ptft evaluate`` process.

SLURM sends SIGTERM before it kills a job (on preemption, ``scancel`` or the time limit) and, with
the cluster profile's ``--signal=TERM@600``, ten minutes before the time limit; SIGUSR1 is handled
the same way for a job that asks for it outside the workflow. ``ptft finetune`` and ``ptft
evaluate`` install :class:`StopRequested` first thing. Until training starts a signal stops the
process at once (there is nothing to save); in the training loop it makes the run finish its
current optimizer step, save, and raise :class:`Interrupted`. The command exits with 128 + the
signal number.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Interrupted(BaseException):
    """A stop signal arrived; ``kept`` says what of the work survives it.

    A ``BaseException``, as ``KeyboardInterrupt`` is: the handler may raise it inside library code,
    whose ``except Exception`` must not swallow it (nor mistake it for a corrupt file).
    """

    def __init__(self, signum: int, kept: str = "the training state is saved"):
        super().__init__(f"stopped by {signal.Signals(signum).name}; {kept}")
        self.signum = signum


class StopRequested:
    """Remembers the first stop signal received; installs itself as the handler.

    With ``immediate`` the handler raises :class:`Interrupted` (saying ``kept``) where the
    process is, which is right while nothing is in progress that a stop would lose (loading,
    encoding, scoring that writes each finished part atomically); :meth:`defer` switches to
    remembering the signal, for the training loop, which saves after the step it is in.
    """

    def __init__(self, immediate: bool = False, kept: str = "nothing had been trained; any saved state is kept"):
        self.signum: int | None = None
        self.immediate, self.kept = immediate, kept
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def _handle(self, signum, _frame):
        first, self.signum = self.signum is None, signum
        if self.immediate:
            log.warning("received %s: stopping now", signal.Signals(signum).name)
            raise Interrupted(signum, self.kept)
        if first:
            log.warning("received %s: saving the training state after this step", signal.Signals(signum).name)

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal arrived (in case library code swallowed the raise)."""
        if self.signum is not None:
            raise Interrupted(self.signum, self.kept)

    def defer(self) -> None:
        """From now on a signal is only remembered; one already received stops here."""
        self.check()
        self.immediate = False

    def __bool__(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def run_stoppable(command: str, body, **handler) -> None:
    """Run ``body(stop)`` with a :class:`StopRequested` (``handler``: its arguments) installed now.

    Installed before torch and the model load (seconds to minutes), so a signal at any point ends
    the process with 128 + the signal number, as a shell reports a process killed by it: SLURM
    and the workflow treat the job as stopped, and its re-run resumes from what was kept.
    """
    stop = StopRequested(**handler)
    try:
        body(stop)
    except Interrupted as err:
        log.warning("%s: %s", command, err)
        raise SystemExit(128 + err.signum) from None
    finally:
        stop.restore()
