import pytest

from crossback.node.config import ConfigError, config_to_dict, load_config, parse_config

BASE = {"tasks": ["Smileys & Emotion"]}


def with_(**over):
    return {**BASE, **over}


def test_defaults_and_round_trip():
    cfg = parse_config(with_(method={"name": "cpg", "cpg": {"accuracy_goal": 0.5}}))
    assert cfg.method.cpg.accuracy_goal == 0.5 and cfg.data.source == "emoji"
    assert parse_config(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize("data, key", [
    (with_(method={"name": "packnet", "packnet": {"prune_rato": 0.5}}), "method.packnet.prune_rato"),
    (with_(trian={"epochs": 1}), "trian"),
    (with_(model={"image": {"patch": 4}}), "model.image.patch"),
])
def test_unknown_keys_are_named_with_a_suggestion(data, key):
    with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
        parse_config(data, "x.yaml")


@pytest.mark.parametrize("data, key", [
    (with_(train={"epochs": "ten"}), "train.epochs"),
    (with_(train={"lr": True}), "train.lr"),
    (with_(method={"name": "ewc"}), "method.name"),
    (with_(data={"source": "imagenet"}), "data.source"),
    (with_(data={"modality": "audio"}), "data.modality"),
    (with_(data={"split": {"train": 0.9, "val": 0.2, "test": 0.2}}), "data.split"),
    (with_(method={"packnet": {"prune_ratio": 1.5}}), "method.packnet.prune_ratio"),
    ({"tasks": []}, "tasks"),
    ({}, "tasks"),
    ({"tasks": ["a", "a"]}, "tasks"),
    ({"tasks": [{"name": "x", "superclass": "s", "classes": ["a"]}]}, r"tasks\[0\]"),
    ({"tasks": [{"nme": "x"}]}, r"tasks\[0\].nme"),
])
def test_bad_values_name_their_key(data, key):
    with pytest.raises(ConfigError, match=key):
        parse_config(data, "x.yaml")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [a\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("tasks: [a]\nseeed: 1\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'seeed' \(did you mean 'seed'\?\)"):
        load_config(typo)
