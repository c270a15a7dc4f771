import pytest

from crossback.config.errors import ConfigError
from crossback.config.run import config_to_dict, load_config, parse_config

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


@pytest.mark.parametrize("data, key", [
    (with_(train={"epochs": -3}), "train.epochs: must be at least 1"),
    (with_(train={"lr": float("nan")}), "train.lr: nan is not a finite number"),
    (with_(method={"cpg": {"tolerance": float("inf")}}), "method.cpg.tolerance: inf is not a finite number"),
    (with_(model={"token_dim": 0}), "model.token_dim: must be at least 1"),
    (with_(data={"split": {"min_items_per_class": 2}}), "data.split.min_items_per_class: must be at least 3"),
    (with_(method={"piggyback": {"threshold": 0.02, "init_score": 0.01}}), "method.piggyback: threshold 0.02 must be below init_score"),
    (with_(seed=-1), "seed: must be at least 0"),
])
def test_every_numeric_setting_is_range_checked(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        parse_config(data, "x.yaml")


def test_a_misplaced_key_says_where_it_belongs():
    with pytest.raises(ConfigError, match=r"key 'split' is misplaced: it belongs at 'data.split'"):
        parse_config(with_(split={"train": 0.5}), "x.yaml")
    with pytest.raises(ConfigError, match=r"key 'train.prune_ratio' is misplaced: it belongs at 'method.packnet.prune_ratio'"):
        parse_config(with_(train={"prune_ratio": 0.5}), "x.yaml")


def test_a_relative_data_root_is_resolved_against_the_config_files_folder(tmp_path, monkeypatch):
    for stem in ("a", "b", "c"):
        for cls in ("cats", "dogs"):
            folder = tmp_path / "data" / "pets" / cls
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{stem}.txt").write_text(f"a {cls} called {stem}\n")
    (tmp_path / "configs").mkdir()
    cfg_path = tmp_path / "configs" / "run.yaml"
    cfg_path.write_text("data: {source: folder, root: ../data, modality: text, split: {min_items_per_class: 3}}\n"
                        "tasks: [pets]\n")
    monkeypatch.chdir(tmp_path.parent)  # anywhere but the config's folder
    cfg = load_config(cfg_path)
    assert cfg.data.root == str((tmp_path / "data").resolve())
    from crossback.data.prepare import prepare_tasks
    tasks, infos = prepare_tasks(cfg)
    assert infos[0]["classes"] == ["cats", "dogs"] and infos[0]["majority"] == pytest.approx(0.5)
    cfg_path.write_text("data: {source: folder, root: ../nowhere}\ntasks: [pets]\n")
    from crossback.config.errors import DataError
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        prepare_tasks(load_config(cfg_path))
