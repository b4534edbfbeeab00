"""Experiment configs: every experiment loads, overrides apply, bad keys are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from llmdpd.config.load import EXPERIMENTS_DIR, ConfigError, load_config
from llmdpd.data.tasks import registry, resolve_splits, split_tasks


EXPERIMENTS = sorted(
    str(p.relative_to(EXPERIMENTS_DIR).with_suffix("")) for p in EXPERIMENTS_DIR.rglob("*.yaml")
    if "base" not in p.relative_to(EXPERIMENTS_DIR).parts
)


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_loads(exp):
    cfg = load_config(exp)
    train, unseen = split_tasks(cfg.data)
    assert train and not set(train) & set(unseen)
    # The run directory is named after `name`: the file's own `name:` if it sets one, else the file's stem.
    declared = (yaml.safe_load((EXPERIMENTS_DIR / f"{exp}.yaml").read_text()) or {}).get("name")
    assert cfg.name == (declared or Path(exp).name)
    assert cfg.name != "experiment"


def test_experiments_are_found_from_an_installed_package(tmp_path, monkeypatch):
    # No source checkout: the copy setup.cfg installs under <prefix>/share/llmdpd/experiments is used.
    import shutil
    import sys

    from llmdpd.config import load

    installed = tmp_path / "share" / "llmdpd" / "experiments"
    shutil.copytree(EXPERIMENTS_DIR, installed)
    monkeypatch.setattr(load, "SOURCE_EXPERIMENTS_DIR", tmp_path / "no-checkout" / "experiments")
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.delenv(load.EXPERIMENTS_ENV, raising=False)
    assert load.experiments_dir() == installed
    assert load.experiment_path("ml45/llmdpd") == installed / "ml45" / "llmdpd.yaml"
    assert load_config("smoke").name == "smoke"
    monkeypatch.setenv(load.EXPERIMENTS_ENV, str(EXPERIMENTS_DIR))
    assert load.experiments_dir() == EXPERIMENTS_DIR


def test_setup_installs_every_experiment_folder():
    # setup.cfg's data_files name each folder of experiments/ (a new folder must be added there too).
    import configparser

    parser = configparser.ConfigParser()
    parser.read(EXPERIMENTS_DIR.parent / "setup.cfg")
    installed = {pattern.strip() for _, pattern in parser["options.data_files"].items()}
    folders = {p.parent for p in EXPERIMENTS_DIR.rglob("*.yaml")}
    assert installed == {f"{p.relative_to(EXPERIMENTS_DIR.parent)}/*.yaml" for p in folders}


def test_overrides_are_typed_and_applied():
    cfg = load_config("smoke", ["trainer.max_steps=7", "policy.eta=0", "seed=3"])
    assert cfg.trainer.max_steps == 7 and cfg.policy.eta == 0.0 and cfg.seed == 3
    with pytest.raises(ConfigError, match="Invalid value for 'policy.eta'"):
        load_config("smoke", ["policy.eta=abc"])


@pytest.mark.parametrize(
    "override, named, suggestion",
    [
        ("policy.etaa=1", "policy.etaa", "policy.eta"),
        ("trainer.max_step=5", "trainer.max_step", "trainer.max_steps"),
        ("nonsense=1", "nonsense", None),
    ],
)
def test_unknown_key_is_named(override, named, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config("smoke", [override])
    assert f"'{named}'" in str(err.value)
    if suggestion:
        assert f"'{suggestion}'" in str(err.value)


def test_unknown_experiment_suggests_closest():
    with pytest.raises(ConfigError, match="Did you mean 'smoke'"):
        load_config("smok")


def test_registry_matches_metaworld_benchmarks():
    # The benchmark classes' own task tables (instantiating ML10/ML45 builds every env: a minute).
    from metaworld import env_dict

    reg = registry()
    assert len(reg["tasks"]) == 50
    assert all(len(set(t["descriptions"])) >= 3 for t in reg["tasks"].values())
    for split, table in (("ml10", env_dict.ML10_V3), ("ml45", env_dict.ML45_V3)):
        assert reg["splits"][split]["train"] == list(table["train"]), split
        assert reg["splits"][split]["test"] == list(table["test"]), split
    assert reg["splits"]["mt10"]["train"] == list(env_dict.MT10_V3)
    assert sorted(reg["tasks"]) == sorted(env_dict.MT50_V3)


def test_the_wider_unseen_split_holds_every_task_ml10_never_trained_or_tuned_on():
    from llmdpd.config.load import load_config as load

    splits = registry()["splits"]
    wide = splits["ml10_unseen37"]
    tuned_on = set(load("ml45/llmdpd_x0_rwr_t15_long_heldout").data.validation_tasks)
    assert wide["train"] == splits["ml10"]["train"]
    expected = set(registry()["tasks"]) - set(splits["ml10"]["train"]) - (tuned_on - set(splits["ml10"]["test"]))
    assert set(wide["test"]) == expected and len(wide["test"]) == len(expected) == 37
    assert set(splits["ml10"]["test"]) | set(splits["ml45"]["test"]) <= set(wide["test"])


def test_ml45_folds_are_the_recorded_draws_held_out_of_ml45():
    import numpy as np

    splits = registry()["splits"]
    ml45 = splits["ml45"]["train"]
    tuned_on = set(load_config("ml45/llmdpd_x0_rwr_t15_long_heldout").data.validation_tasks)
    eligible = [task for task in ml45 if task not in tuned_on and task not in splits["ml10"]["train"]]
    assert len(eligible) == 30
    for k in range(1, 7):
        fold = splits[f"ml45_fold{k}"]
        drawn = [str(task) for task in np.random.default_rng(k).choice(eligible, 5, replace=False)]
        assert sorted(fold["test"]) == sorted(drawn), k
        assert fold["train"] == [task for task in ml45 if task not in drawn] and len(fold["train"]) == 40
        eligible = [task for task in eligible if task not in drawn]
    assert eligible == []  # the six folds partition the eligible tasks


def test_a_split_held_out_of_another_is_written_out_or_refused():
    splits = {"base": {"train": ["a", "b", "c"], "test": ["z"]}, "fold": {"holds_out_of": "base", "test": ["b"]}}
    assert resolve_splits(splits)["fold"] == {"train": ["a", "c"], "test": ["b"]}
    assert resolve_splits(splits)["base"] == splits["base"]
    bad = {"fold": {"holds_out_of": "base", "test": ["z"]},
           "both": {"holds_out_of": "base", "train": ["a"], "test": ["b"]},
           "orphan": {"holds_out_of": "nowhere", "test": ["b"]}}
    messages = {"fold": "holds out tasks that 'base' does not train on: \\['z'\\]",
                "both": "gives both 'train' and 'holds_out_of'", "orphan": "'nowhere', which is not a split"}
    for name, split in bad.items():
        with pytest.raises(ValueError, match=messages[name]):
            resolve_splits({"base": splits["base"], name: split})


@pytest.mark.parametrize("override", ["policy.acting=best", "policy.critic=mc", "eval.split=train", "policy.kind=gpt",
                                      "eval.prompt_retrieval=nearest"])
def test_a_value_outside_its_choices_is_one_line(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"Invalid value for '{re.escape(key)}': .*expected one of"):
        load_config("smoke", [override])


@pytest.mark.parametrize("override", ["world_model.unroll=0", "world_model.width=-1", "world_model.lr=0",
                                      "world_model.holdout_episodes=-1", "world_model.members=0",
                                      "world_model.max_spread=-0.1", "world_model.adapt_steps=-1",
                                      "world_model.adapt_lr=0", "world_model.adapt_replay=1.0",
                                      "world_model.adapt_replay=-0.5"])
def test_world_model_sizes_must_be_positive(override):
    with pytest.raises(ConfigError, match=rf"Invalid value for '{re.escape(override.split('=')[0])}': "):
        load_config("smoke", [override, "eval.prompt_retrieval=imagined"])


def test_the_unconditional_candidate_needs_a_rule_that_consults_the_policy():
    with pytest.raises(ConfigError, match="eval.prompt_retrieval_unconditional needs a retrieval rule that consults "
                                          "the policy .*not 'motion'"):
        load_config("smoke", ["eval.prompt_retrieval=motion", "eval.prompt_retrieval_unconditional=true"])
    assert load_config("smoke", ["eval.prompt_retrieval=imagined", "eval.prompt_retrieval_unconditional=true"])
    with pytest.raises(ConfigError, match="needs a retrieval rule that consults the policy .*not 'distilled'"):
        load_config("smoke", ["eval.prompt_retrieval=distilled", "eval.prompt_retrieval_unconditional=true"])


def test_distilled_practice_has_no_leave_one_out_validation():
    assert load_config("smoke", ["eval.prompt_retrieval=distilled"]).eval.prompt_retrieval == "distilled"
    with pytest.raises(ConfigError, match="distilled fits its ranker on the training tasks; .*among its own targets"):
        load_config("smoke", ["eval.prompt_retrieval=distilled", "eval.prompt_retrieval_leave_one_out=true"])


def test_reading_half_an_unseen_prompt_is_its_own_choice_of_prompt():
    assert load_config("smoke", ["eval.prompt_parts=text"]).eval.prompt_parts == "text"
    with pytest.raises(ConfigError, match="eval.prompt_parts=trajectory reads part of an unseen task's own prompt"):
        load_config("smoke", ["eval.prompt_parts=trajectory", "eval.prompt_retrieval=motion"])
    with pytest.raises(ConfigError, match="eval.prompt_parts=text needs both prompts"):
        load_config("smoke", ["eval.prompt_parts=text", "trajectory.enabled=false"])
    with pytest.raises(ConfigError, match=r"Invalid value for 'eval.prompt_parts': .*expected one of"):
        load_config("smoke", ["eval.prompt_parts=demonstration"])


def test_the_own_prompt_candidate_needs_a_rule_that_consults_the_policy_and_unseen_tasks():
    with pytest.raises(ConfigError, match="eval.prompt_retrieval_own needs a retrieval rule that consults the "
                                          "policy .*not 'text'"):
        load_config("smoke", ["eval.prompt_retrieval=text", "eval.prompt_retrieval_own=true"])
    with pytest.raises(ConfigError, match="every training task would be offered itself"):
        load_config("smoke", ["eval.prompt_retrieval=practice", "eval.prompt_retrieval_own=true",
                              "eval.prompt_retrieval_leave_one_out=true"])
    assert load_config("smoke", ["eval.prompt_retrieval=imagined", "eval.prompt_retrieval_own=true"])


def test_one_prompt_chooser_at_a_time():
    with pytest.raises(ConfigError, match="eval.prompt_task and eval.prompt_retrieval both choose the prompt"):
        load_config("smoke", ["eval.prompt_task=reach-v3", "eval.prompt_retrieval=demonstration"])


def test_retrieval_for_training_tasks_needs_a_rule_and_text_retrieval_needs_text():
    with pytest.raises(ConfigError, match="eval.prompt_retrieval_leave_one_out needs a retrieval rule"):
        load_config("smoke", ["eval.prompt_retrieval_leave_one_out=true"])
    with pytest.raises(ConfigError, match="eval.prompt_retrieval=text needs the text prompt"):
        load_config("smoke", ["eval.prompt_retrieval=text", "text.enabled=false"])
    assert load_config("smoke", ["eval.prompt_retrieval=motion", "eval.prompt_retrieval_leave_one_out=true",
                                 "text.enabled=false"]).eval.prompt_retrieval == "motion"


def test_a_diffusion_actor_without_a_critic_refuses_what_reads_q():
    ok = load_config("smoke", ["policy.critic=none", "policy.eta=0", "policy.awr_advantage=episode"])
    assert ok.policy.critic == "none"
    for overrides, named in [
        (["policy.eta=0.1"], "policy.eta=0.1"),
        (["policy.eta=0", "policy.awr_advantage=task"], "policy.awr_advantage=task"),
        (["policy.eta=0", "policy.awr_advantage=episode", "policy.acting=softmax"], "policy.acting=softmax"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(named) + ".*set policy.critic to td or expectile"):
            load_config("smoke", ["policy.critic=none", *overrides])
    # The MLP baseline never has a critic: the setting does not concern it.
    assert load_config("mlp_bc", ["policy.critic=none", "policy.eta=0.1"]).policy.kind == "mlp_bc"


def test_validation_tasks_leave_training_and_no_expert_of_theirs_drives_training_data():
    from llmdpd.data.generate import behaviour_mixture
    from llmdpd.data.tasks import validation_tasks

    cfg = load_config("ml45/llmdpd_x0_rwr_t15_long_heldout")
    train, unseen = split_tasks(cfg.data)
    held_out = validation_tasks(cfg.data)
    assert len(train) == 40 and len(held_out) == 5 and not set(held_out) & (set(train) | set(unseen))
    assert set(train) | set(held_out) == set(registry()["splits"]["ml45"]["train"])
    assert cfg.eval.split == "validation"
    # A validation task that other behaviours borrow an expert from is dropped from the borrowed experts.
    ml10 = load_config("metaworld", ["data.validation_tasks=[sweep-v3]"])
    _, others = behaviour_mixture(ml10, "push-v3")
    assert "sweep-v3" not in others and "reach-v3" in others
    assert "sweep-v3" in behaviour_mixture(load_config("metaworld"), "push-v3")[1]
    for held_out, message in (("[bin-picking-v3]", "must be training tasks"),
                              ("[reach-v3,button-press-topdown-v3]", "every training")):
        smoke = load_config("smoke", [f"data.validation_tasks={held_out}"])
        with pytest.raises(ConfigError, match=message):  # the command line's one-line error
            split_tasks(smoke.data)
