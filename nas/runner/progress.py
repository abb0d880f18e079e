"""A rich live display for a running search.

It shows trials done out of the budget, front size, the best point, and the joules spent (with the meter, and
'estimate' where it is one).
"""

from __future__ import annotations

import threading

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nas.spec import StudySpec
from storage import Store


class SearchProgress:
    """The live progress bar of ``nas search``, refreshed from the store after each stored trial."""

    def __init__(self, store: Store, spec: StudySpec, console: Console | None = None) -> None:
        self.store = store
        self.spec = spec
        self.console = console or Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False,
        )
        self.task = self.bar.add_task(f"search {spec.name}", total=spec.budget.trials, info="starting Ray...")
        self._live: Live | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the live display and draw it once."""
        self._live = Live(self.bar, console=self.console, refresh_per_second=4)
        self._live.start()
        self.refresh()

    def stop(self) -> None:
        """Draw the final state and end the live display."""
        if self._live:
            self.refresh()
            self._live.stop()

    def refresh(self) -> None:
        """Re-read trials, front and joules spent from the store and redraw; a failed read is skipped."""
        with self._lock:
            try:
                views = self.store.trials(self.spec.name)
                front = self.store.front(self.spec.name)
                info = self.store.get_study(self.spec.name)
            except Exception:  # the display must never break the search
                return
            done = sum(v.spends_budget for v in views)
            fails = sum(v.state == "FAIL" for v in views)
            best = ""
            if front:
                first = self.spec.objectives[0]
                sign = 1 if first.resolved_direction == "maximize" else -1
                top = max(front, key=lambda v: sign * (v.values().get(first.metric) or float("-inf") * sign))
                vals = top.values()
                e = vals.get("energy_per_sample_j")
                best = f"best #{top.number}: {first.metric}={vals.get(first.metric):.3g}"
                if e is not None:
                    best += f", {e:.3g} J/sample"
            j = info.total_energy_j
            est = " est." if any(v.is_estimate for v in views) else ""
            spent = f"{j:.0f} J{est}" if j is not None else "no meter"
            self.bar.update(self.task, completed=min(done, self.spec.budget.trials),
                            info=f"front {len(front)} | {best or 'no complete trial yet'} | {spent} | {fails} failed")


class TrialProgress:
    """A progress bar for one trial (``nas trial``): training steps, then evaluate, measure, save.

    Use as a context manager; the instance is the pipeline's ``progress(phase, done, total)`` callback.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console or Console(stderr=True), transient=True,
        )
        self.task = self.bar.add_task("train", total=None)

    def __enter__(self) -> TrialProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        """Show the pipeline's current ``phase`` with ``done`` out of ``total``."""
        self.bar.update(self.task, description=phase, completed=done, total=total)
