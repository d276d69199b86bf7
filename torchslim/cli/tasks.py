"""The command lines of the workload packages: each torchslim package with a `cli.py` that defines
`TASK` (text generation: `torchslim/generation/cli.py`) adds its options to `torchslim optimize`
(`add_options(parser)`), says whether the parsed arguments are its kind (`wants(args)`), runs them
(`run(args) -> exit code`) and refuses its own options on a run of another kind
(`refuse_own_options(args)`). Found by file, imported without torch, so a new workload package adds
its command line without an edit here or in cli/optimize.py."""
from __future__ import annotations

import importlib
import os


def discover() -> list:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = []
    for name in sorted(os.listdir(root)):
        if name != "cli" and os.path.isfile(os.path.join(root, name, "cli.py")):
            mod = importlib.import_module(f"torchslim.{name}.cli")
            if getattr(mod, "TASK", None):
                found.append(mod)
    return found


TASK_CLIS = discover()
