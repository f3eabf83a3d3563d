"""mambatr.tune and recipes: the search finds the answer a model is built to have, resumes, and its recipe
is used (and refused) as a schedule is."""

from __future__ import annotations

import json

import pytest
import torch
from test_calibrate import SMALL, images, tiny_model

import mambatr
from mambatr.cli import main
from mambatr.reduction.calibration import Budget
from mambatr.reduction.recipe import Recipe
from mambatr.reduction.tune import tune, variants


def test_variants_are_each_methods_searchable_options():
    names = [v.name for v in variants(["mtr", "hsa", "stm"])]
    assert len(names) == 9 + 2 + 2 and names[0] == "mtr(indicator=delta, strategy=merge)"
    assert "hsa(align=False)" in names
    with pytest.raises(ValueError, match="unknown reduction method 'nope'"):
        variants(["nope"])


def test_finds_the_method_that_is_exact_on_a_model_built_for_it():
    """Blocks 2.. of this model add nothing, so removing tokens after block 1 or later cannot change the
    output. At 55 % only methods that remove more than half of a layer's tokens at once (STM) get
    there without reducing after block 0; UTR (at most half) must reduce after block 0 and loses."""
    model = tiny_model(dead_from=2)
    result = tune(
        model, images(count=4), flops_reduction=0.55, methods=["utr", "stm"], step=10, progress=False
    )
    assert result.pick.method == "stm" and result.pick.kl < 1e-12
    assert min(c.kl for c in result.candidates if c.method == "utr") > 1e-8
    assert abs(result.schedule.flops_reduction_achieved - 0.55) <= 0.005
    assert 0 not in result.schedule.removals
    assert model.reduction is None  # left dense


class Interrupting:
    """A store that stops the run (as Ctrl-C would) after ``after`` saves; keeps what it saved."""

    def __init__(self, after: int | None = None) -> None:
        self.cells: dict[str, object] = {}
        self.after = after

    def done(self, key: str) -> object | None:
        return self.cells.get(key)

    def save(self, key: str, result: object) -> object:
        if self.after is not None and len(self.cells) >= self.after:
            raise KeyboardInterrupt
        self.cells[key] = json.loads(json.dumps(result))  # as a run folder reads it back
        return self.cells[key]


def test_an_interrupted_search_resumes_to_the_same_pick():
    model, x = tiny_model(), images(count=4)
    common = dict(flops_reduction=0.3, methods=["utr"], step=10, progress=False)
    whole = tune(model, x, **common)
    store = Interrupting(after=5)
    with pytest.raises(KeyboardInterrupt):
        tune(model, x, store=store, **common)
    store.after = None
    resumed = tune(model, x, store=store, **common)
    assert resumed.schedule.removals == whole.schedule.removals and resumed.pick.kl == whole.pick.kl
    assert resumed.computed == whole.computed - 5
    assert [c.to_dict() for c in resumed.candidates] == [c.to_dict() for c in whole.candidates]


def test_an_accuracy_budget_finds_the_most_flops_that_keep_it():
    model = tiny_model()
    budget = Budget(max_kl=1e-4)
    result = tune(model, images(count=4), budget=budget, methods=["stm"], step=10, progress=False)
    kept = [c for c in result.candidates if c.keeps_budget and c.images == 4]
    assert result.pick.kl <= 1e-4 and result.pick.flops_reduction == max(c.flops_reduction for c in kept)
    assert result.pick.flops_reduction > 0
    assert result.schedule.flops_reduction_target == result.pick.flops_reduction
    with pytest.raises(ValueError, match="no reduction keeps the accuracy budget {.max_kl.: 1e-15}"):
        tune(model, images(count=4), budget=Budget(max_kl=1e-15), methods=["stm"], step=10, progress=False)
    with pytest.raises(ValueError, match="max_kl or min_agreement"):
        Budget()
    with pytest.raises(ValueError, match="min_agreement must be in"):
        Budget(min_agreement=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        tune(model, images(count=4), flops_reduction=0.3, budget=budget)


def test_a_recipe_applies_as_its_schedule_and_is_refused_for_another_architecture(tmp_path):
    model, x = tiny_model(), images(count=4)
    result = tune(
        model, x, flops_reduction=0.3, methods=["utr"], step=10, model_name="vim_custom", progress=False
    )
    recipe = Recipe(schedule=result.schedule, goal={"flops_reduction": 0.3})
    recipe.save(tmp_path / "r.json")
    loaded = Recipe.load(tmp_path / "r.json")
    assert loaded.schedule.removals == result.schedule.removals and loaded.method == "utr"
    mambatr.apply(model, recipe=tmp_path / "r.json")
    by_recipe = model(x)
    mambatr.apply(model, schedule=result.schedule)
    assert torch.equal(model(x), by_recipe)
    other = mambatr.create_model("vim_custom", **{**SMALL, "depth": 4}).eval()
    with pytest.raises(ValueError, match="made for"):
        mambatr.apply(other, recipe=tmp_path / "r.json")
    (tmp_path / "bad.json").write_text(json.dumps({**loaded.to_dict(), "format": "mambatr-schedule/1"}))
    with pytest.raises(ValueError, match="not a mambatr recipe"):
        Recipe.load(tmp_path / "bad.json")


@pytest.mark.slow
def test_cli_tune_then_eval_with_the_recipe(tmp_path, capsys):
    """The issue's command on the shipped testbed (a few images): recipe written, used by eval, refused
    for another model and beside other reduction flags; a rerun reuses every step."""
    out = tmp_path / "r.json"
    args = ["tune", "--model", "vim_fmnist", "--flops-reduction", "0.3", "--images", "16", "--methods", "utr"]
    main([*args, "--out", str(out), "--threads", "1"])
    assert "pick: utr" in capsys.readouterr().out
    recipe = json.loads(out.read_text())
    assert recipe["format"] == "mambatr-recipe/1" and recipe["model"] == "vim_fmnist"
    assert recipe["search"]["weights_sha256"] and recipe["candidates"]
    main(["eval", "--model", "vim_fmnist", "--recipe", str(out), "--limit", "32", "--json"])
    assert json.loads(capsys.readouterr().out)["method"] == "utr"
    for extra, message in (
        (["--model", "vim_fmnist_deit"], "tuned for vim_fmnist, not for --model vim_fmnist_deit"),
        (["--model", "vim_fmnist", "--flops-reduction", "0.2"], "do not give --flops-reduction"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(["eval", *extra, "--recipe", str(out), "--limit", "8"])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    main([*args, "--out", str(out), "--json"])
    assert json.loads(capsys.readouterr().out)["search"]["steps_computed"] == 0
