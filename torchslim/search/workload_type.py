"""What a kind of workload gives the shared search (search/loop.drive): the forward pass (optimize.py),
text generation (generation/search.py) and any new one implement `WorkloadType`, so the loop, the
time budget, the skip rules, the failure rows, the writer, the progress bar and the rows kept on a stop
are one code for all of them, and no surface branches on a task name.

A search is one instance (it keeps that run's state: its baseline, its data); the class-level hooks
(`task`, `table`, `load_saved`, `checkable`) serve the surfaces that read a saved run or folder:
`WorkloadType.find(manifest["task"])` answers them. A subclass with a `task` registers itself; a
package of torchslim whose `workload_type.py` defines one is found without an edit elsewhere."""
from __future__ import annotations

import importlib
import os
from typing import Any, ClassVar

from ..recipes import Recipe
from ..results import RecipeResult


class WorkloadType:
    """One kind of workload: how its search prepares the baseline, tries and judges one recipe, times
    the survivors together and chooses, and what its results look like. The hooks take the search's
    `SearchState` (search/config.py) `s`: `s.run` the rows, `s.models` the models kept by name (the
    baseline's under "baseline"), `s.config` the options (`exhaustive`, `time_budget`, `objective`,
    `debug`), `s.budget`, `s.bar`, `s.write(run)`."""

    task: ClassVar[str] = ""  # results.json workload.task and torchslim.json "task"; "" for the forward pass
    unit: ClassVar[str] = "recipes"  # the progress bar's unit
    fallback: ClassVar[bool] = False  # whether a rejected quantization recipe gets the float fallback (search/fallback.py)
    checkable: ClassVar[bool] = True  # whether `torchslim check` re-times its saved folders
    hook: ClassVar[str] = "candidates"  # the techniques' classmethod that lists its recipes (recipes.hooked)
    table_title: ClassVar[str] = ""  # the heading of its own table in report.html (`table`)
    registry: ClassVar[dict[str, type[WorkloadType]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.task:
            WorkloadType.registry[cls.task] = cls

    # -- the search (one instance per run) ------------------------------------------------------
    def baseline(self, s) -> RecipeResult:
        """Measure the baseline: its row appended to `s.run.recipes`, its model in `s.models["baseline"]`."""
        raise NotImplementedError

    def candidates(self, s) -> list[Recipe]:
        """The recipes to try, in order (`s.explicit`: the user named them); records the order in `s.run.search`."""
        raise NotImplementedError

    def eta(self, s) -> str:
        """What the progress bar adds after the budget's clock (an ETA, say), or ""."""
        return ""

    def skip(self, recipe: Recipe, s) -> str | None:
        """A reason of this workload not to try `recipe` (after the shared hardware and time-budget rules), or None."""
        return None

    def row(self, recipe: Recipe, **fields: Any) -> RecipeResult:
        """A new row of this workload's result type for `recipe` (a skipped one: status and reason)."""
        return RecipeResult(name=recipe.name, steps=recipe.to_list(), **fields)

    def try_one(self, recipe: Recipe, s) -> tuple[RecipeResult, Any]:
        """Apply `recipe` and judge it: (its row, the model to time or None); failures are rows (search/trial.fail)."""
        raise NotImplementedError

    def keep(self, recipe: Recipe, row: RecipeResult, model: Any, s) -> None:
        """Keep a model that passed for the final timing."""
        s.models[recipe.name] = model

    def time_survivors(self, s) -> None:
        """Time `s.models` together (interleaved, the baseline among them) and fill each row's figures."""
        raise NotImplementedError

    def choose(self, s) -> RecipeResult | None:
        """Choose the best row under `s.config.objective` (status "chosen", `s.run.chosen`) and save it."""
        raise NotImplementedError

    def report_files(self, run, d: dict) -> dict[str, str]:
        """Files written beside results.json and report.html by the shared writer (search/output.write):
        name -> text. It may add keys to `d`, the results.json dict, before it is written."""
        return {}

    # -- the surfaces (class level: a saved run or folder) ----------------------------------------
    @classmethod
    def table(cls, d: dict) -> str | None:
        """This workload's own table for the report (a results.json dict), or None."""
        return None

    @classmethod
    def load_saved(cls, folder: str, device: str = "cpu", verify: bool = True):
        """Reload a folder this workload saved (torchslim.load hands it over by its manifest's task)."""
        raise NotImplementedError

    @staticmethod
    def find(task: str | None) -> type[WorkloadType] | None:
        """The workload type registered for `task` (a results.json or torchslim.json "task"), or None."""
        if not task:
            return None
        if task not in WorkloadType.registry:
            discover()
        return WorkloadType.registry.get(task)


def discover() -> None:
    """Import every torchslim package's `workload_type.py` (each registers its types on import)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in sorted(os.listdir(root)):
        if os.path.isfile(os.path.join(root, name, "workload_type.py")) and name != "search":
            importlib.import_module(f"torchslim.{name}.workload_type")
