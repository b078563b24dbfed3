"""preset: auto's strategy probe (probe.py): candidates measured on a split of train, never on validation."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

import tuneforge
from tuneforge.config import load_config
from tuneforge.data.examples import Examples
from tuneforge.errors import ConfigError
from tuneforge.probe import best, probe_splits, strategy_keys


def probed(text_recipe, **probe) -> dict:
    recipe = text_recipe(train={"max_steps": None, "epochs": 3, "lr": 3e-3, "schedule": "constant"},
                         eval={"every_steps": None}, output={"report": False})
    recipe.update(preset="auto", probe={"enabled": True, "seconds": 3, **probe})
    return recipe


def test_probe_trains_each_candidate_on_train_rows_and_keeps_the_best(text_recipe, tmp_path):
    scratch = set(Path(tempfile.gettempdir()).glob("tuneforge-probe-*"))
    r = tuneforge.train(probed(text_recipe), output=str(tmp_path / "run"), quiet=True)
    probe = r.summary["preset"]["probe"]
    rows = {c["strategy"]: c for c in probe["candidates"]}
    assert list(rows) == ["linear_probe", "full_fine_tune"]
    assert probe["chosen"] == max(rows.values(), key=lambda c: c["value"])["strategy"]
    assert r.summary["preset"]["strategy"] == probe["chosen"]
    assert set(Path(tempfile.gettempdir()).glob("tuneforge-probe-*")) == scratch  # its scratch runs are gone
    log = (r.run_dir / "train.log").read_text()
    assert "the validation split is not used" in log and f"probe: chose {probe['chosen']}" in log


def test_a_recipe_that_sets_the_strategy_is_not_probed(text_recipe, tmp_path):
    recipe = probed(text_recipe)
    recipe["train"]["head_epochs"] = 1
    r = tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    assert r.summary["preset"]["probe"] == {"skipped": "the recipe sets the strategy itself"}
    assert r.summary["preset"]["strategy"] == "fine_tune"


def test_probe_needs_preset_auto_and_one_process(text_recipe):
    recipe = probed(text_recipe)
    del recipe["preset"]
    with pytest.raises(ConfigError, match="set preset: auto") as err:
        load_config(recipe)
    assert len(str(err.value).splitlines()) == 1


def test_probe_rows_come_from_train_and_are_disjoint(text_recipe):
    cfg = load_config(probed(text_recipe, rows=50, holdout=0.25))
    train = Examples([f"text {i}" for i in range(200)], [i % 2 for i in range(200)], [f"line {i}" for i in range(200)])
    fit, held = probe_splits(cfg, train)
    assert len(fit) == 50 and len(held) == 50
    assert not set(fit.where) & set(held.where) and set(fit.where) | set(held.where) <= set(train.where)
    assert sum(held.labels) == 25  # stratified


def test_the_best_candidate_and_ties():
    rows = [{"strategy": "linear_probe", "value": 0.9}, {"strategy": "full_fine_tune", "value": 0.9},
            {"strategy": "lora", "value": None}]
    assert best(rows, "max")["strategy"] == "linear_probe"  # a tie goes to the cheaper
    rows[1]["value"] = 0.5
    assert best(rows, "min")["strategy"] == "full_fine_tune"
    assert best([{"strategy": "lora", "value": None}], "max") is None


def test_candidate_keys_set_the_strategy_explicitly(text_recipe):
    from tuneforge.presets import recipe_strategy, STRATEGY_KEYS

    for name in ("linear_probe", "fine_tune", "full_fine_tune", "lora"):
        recipe = text_recipe()
        for key, value in strategy_keys(name).items():
            section, field = key.split(".", 1)
            node = recipe.setdefault(section, {})
            for part in field.split(".")[:-1]:
                node = node.setdefault(part, {})
            node[field.split(".")[-1]] = value
        assert recipe_strategy(load_config(recipe), set(STRATEGY_KEYS)) == name


def test_plan_does_not_run_the_probe(text_recipe):
    from tuneforge.plan import plan

    out = plan(probed(text_recipe))
    assert any("the strategy probe is not run" in line for line in out["data_report"])
    assert "probe" not in out["preset"]


def test_probe_is_refused_on_several_processes(text_recipe):
    from tuneforge.engine.distributed import World, check_supported

    with pytest.raises(ConfigError, match="trains its candidates in one process"):
        check_supported(load_config(probed(text_recipe)), "ddp", World(0, 2, 0, 2))


def test_images_compare_a_linear_probe_and_fine_tune_within_the_time_budget(image_recipe, tmp_path):
    recipe = image_recipe(train={"max_steps": None, "epochs": 2, "time_budget": 60}, eval={"every_steps": None})
    recipe.update(preset="auto", probe={"enabled": True, "budget_share": 0.1})
    r = tuneforge.train(recipe, output=str(tmp_path / "run"), quiet=True)
    probe = r.summary["preset"]["probe"]
    assert probe["seconds_each"] == pytest.approx(3.0)  # 10 % of 60 s, split between 2 candidates
    assert [c["strategy"] for c in probe["candidates"]] == ["linear_probe", "fine_tune"]
    assert all(c["value"] is not None for c in probe["candidates"]), probe
    assert r.summary["preset"]["strategy"] == probe["chosen"]


def test_a_probe_that_agrees_with_the_rules_leaves_the_run_as_it_was(image_recipe, tmp_path, monkeypatch):
    """The candidates draw from the RNGs; the final run is reseeded, so a probe that picks the rules' strategy
    (a linear probe for tiny image data) gives the run preset: auto gives without it: the same new head."""
    import tuneforge.probe

    monkeypatch.setattr(tuneforge.probe, "best", lambda rows, mode: rows[0])  # linear_probe, whatever it scored
    recipe = image_recipe(train={"max_steps": None, "epochs": 2}, eval={"every_steps": None})
    recipe.update(preset="auto", probe={"enabled": True, "seconds": 2})
    probe_run = tuneforge.train(recipe, output=str(tmp_path / "probe"), quiet=True)
    assert probe_run.summary["preset"]["probe"]["chosen"] == "linear_probe"
    recipe["probe"]["enabled"] = False
    plain = tuneforge.train(recipe, output=str(tmp_path / "plain"), quiet=True)
    assert plain.summary["preset"]["strategy"] == "linear_probe"
    history = lambda run: [(r["step"], r.get("train_loss"), r.get("metrics")) for r in map(  # noqa: E731
        json.loads, (run.run_dir / "metrics.jsonl").read_text().splitlines())]
    assert history(probe_run) == history(plain)


def test_the_rules_choice_stands_while_its_curve_was_still_rising():
    from tuneforge.probe import decide

    rows = [{"strategy": "linear_probe", "value": 0.93, "metric": "accuracy", "epochs": 10.0, "unfinished": False},
            {"strategy": "fine_tune", "value": 0.78, "metric": "accuracy", "epochs": 1.55, "unfinished": True}]
    chosen, why = decide(rows, "max", "fine_tune")
    assert chosen["strategy"] == "fine_tune" and "still rising" in why
    rows[1]["unfinished"] = False  # it ran its course and lost
    assert decide(rows, "max", "fine_tune")[0]["strategy"] == "linear_probe"
    rows[1]["unfinished"] = True  # unfinished but not the rules' choice: the scores decide
    assert decide(rows, "max", "linear_probe")[0]["strategy"] == "linear_probe"


def test_cut_short_reads_the_time_budget_record_of_the_last_phase():
    from tuneforge.probe import cut_short

    budget = lambda *phases: {"time_budget": {"phases": list(phases)}}  # noqa: E731
    assert cut_short(budget({"cap": 50, "horizon_steps": 20}))  # the clock fit fewer steps than planned
    assert cut_short(budget({"cap": 50}, {"cap": 90, "stopped_at_step": 70}))  # stopped by the clock
    assert not cut_short(budget({"cap": 50, "horizon_steps": 50}))  # ran its planned steps
    assert not cut_short({"time_budget": None})
