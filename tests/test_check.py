"""`torchslim check MODEL_DIR`: the saved folder's top recipes re-applied, checked and re-timed here."""
import torch

import tiny_models
from torchslim import artifacts, cli
from torchslim.check import check
from torchslim.inputs import Example
from torchslim.recipes import by_name


def _folder(tmp_path, spec="tiny_models:mlp"):
    model, ex = tiny_models.mlp(), Example((torch.randn(8, 64),))
    recipes = by_name(["inference-mode", "torchscript-freeze"], torch.device("cpu"))
    cands = [{"name": r.name, "steps": r.to_list(), "speedup": s} for r, s in zip(recipes, (1.3, 1.1))]
    folder = str(tmp_path / "model")
    artifacts.save(folder, model, recipes[0], ex, spec=spec, reference_output=ex(model), candidates=cands)
    return folder


def test_check_re_times_the_saved_candidates_here(tmp_path, capsys):
    folder = _folder(tmp_path)
    result = check(folder, rounds=2, time_budget=0.5, progress=False)
    assert set(result["rows"]) == {"baseline", "inference-mode", "torchscript-freeze"}
    assert result["saved"] == "inference-mode" and result["holds"] == (result["winner"] == "inference-mode")
    assert result["lines"][0].startswith("saved choice inference-mode: 1.30x on ")
    assert not result["switched"] and artifacts.read_manifest(folder)["recipe_name"] == "inference-mode"
    assert cli.main(["check", folder, "--rounds", "2", "--time-budget", "0.5", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("saved choice inference-mode")


def test_check_of_a_folder_without_a_spec_is_one_clear_line(tmp_path, capsys):
    folder = _folder(tmp_path, spec=None)
    assert cli.main(["check", folder, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "records no model spec" in err[0]
