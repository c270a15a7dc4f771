"""The scenario loader and the plan: errors that name the file and key, and a plan that is a pure function
of the scenario and its seed (data partition, task arrivals, timeline, churn, traces)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from crossback.config.data import ItemPartition, SplitSpec
from crossback.config.errors import ConfigError, DataError
from crossback.config.scenario import load_scenario, parse_scenario
from crossback.data.sources import load_catalog
from crossback.data.tasks import split_items
from crossback.node.node_config import load_node_config
from crossback.sim.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = sorted((ROOT / "examples" / "scenarios").glob("*.yaml"))


def scenario(**over) -> dict:
    base = {"name": "t", "seed": 3, "duration": 300,
            "devices": [{"name": "cams", "count": 4, "source": "digits", "link": "lte", "profile": "rpi4",
                         "partition": {"classes_per_task": 2, "tasks": 2}},
                        {"name": "phones", "count": 2, "modality": "text", "source": "emoji", "link": "wifi",
                         "partition": {"classes_per_task": 3, "tasks": 1}}]}
    return {**base, **over}


def write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("change, message", [
    (lambda s: s["devices"][0].update(cout=3), "devices[0].cout' (did you mean 'count'?)"),
    (lambda s: s["devices"][0].update(link="lte5"), "devices[0].link: unknown link 'lte5'"),
    (lambda s: s["devices"][0].update(profile="nano"), "devices[0].profile: unknown profile 'nano'"),
    (lambda s: s["devices"][0].update(count=0), "devices[0].count: must be at least 1"),
    (lambda s: s["devices"][0]["partition"].update(kind="iid"), "devices[0].partition.kind: 'iid' is not one of"),
    (lambda s: s["devices"][0].update(arrivals={"kind": "scheduled", "at": [0]}),
     "devices[0].arrivals.at: 1 times for 2 task(s)"),
    (lambda s: s["devices"][0].update(arrivals={"kind": "scheduled", "at": [30, 0]}), "in order"),
    (lambda s: s.update(timeline=[{"at": 5, "do": "crash", "target": "cams-9"}]), "timeline[0].target: 'cams-9'"),
    (lambda s: s.update(timeline=[{"at": 5, "do": "explode", "target": "cams-1"}]), "timeline[0].do: 'explode'"),
    (lambda s: s.update(timeline=[{"at": 5, "do": "partition", "sides": [["cams"]]}]),
     "timeline[0].sides: a partition has two"),
    (lambda s: s.update(timeline=[{"at": 5, "do": "link", "target": "cams"}]), "timeline[0].link: required"),
    (lambda s: s.update(timeline=[{"at": 5, "do": "resume", "target": "cams", "duration": 3}]), "timeline[0].duration"),
    (lambda s: s.update(churn=[{"model": "trace"}]), "churn[0].file: required"),
    (lambda s: s.update(links=[{"name": "x", "loss": 1.5}]), "links[0].loss: must be less than 1.0"),
    (lambda s: s.update(devices=[{"name": "a"}, {"name": "a"}]), "devices[1].name: device group 'a' is defined twice"),
])
def test_a_bad_scenario_names_the_file_and_key(tmp_path, change, message):
    data = scenario()
    change(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value), str(err.value)


def test_plan_errors_name_the_group(tmp_path):
    data = scenario()
    data["devices"][0]["classes"] = ["1", "2", "eleven"]
    with pytest.raises(ConfigError, match=r"devices\[0\]\.classes: \['eleven'\] not in digits"):
        make_plan(parse_scenario(data))
    data = scenario()
    data["devices"][0]["overrides"] = {"node": {"threads": 4}}
    with pytest.raises(ConfigError, match=r"devices\[0\]: node.threads is set per device"):
        make_plan(parse_scenario(data))
    data = scenario()
    data["devices"][0]["partition"] = {"kind": "dirichlet", "alpha": 0.01, "classes_per_task": 5, "tasks": 1}
    data["devices"][0]["count"] = 40
    with pytest.raises(ConfigError, match=r"devices\[0\]\.partition: device cams-\d+ holds"):
        make_plan(parse_scenario(data))


def test_the_same_seed_gives_the_same_plan_and_another_seed_another():
    sc = parse_scenario(scenario(churn=[{"model": "exponential", "target": "phones", "mean_on": 40, "mean_off": 10}],
                                 timeline=[{"at": 20, "do": "crash", "target": "cams-1", "duration": 10}]))
    a, b, c = make_plan(sc), make_plan(sc), make_plan(sc, seed=4)
    assert a.to_dict() == b.to_dict() and a.digest == b.digest
    assert c.digest != a.digest
    assert [d.tasks for d in c.devices] != [d.tasks for d in a.devices]
    churn = [e for e in a.events if e.source == "churn[0]"]
    assert churn and churn != [e for e in c.events if e.source == "churn[0]"]


def test_fixed_partition_gives_each_device_distinct_classes_and_the_shared_share_one_stream():
    data = scenario()
    data["devices"][0].update(count=8, partition={"classes_per_task": 2, "tasks": 3, "shared": 0.25})
    plan = make_plan(parse_scenario(data))
    cams = [d for d in plan.devices if d.group == "cams"]
    for d in cams:
        classes = [c for t in d.tasks for c in t["classes"]]
        assert len(d.tasks) == 3 and all(len(t["classes"]) == 2 for t in d.tasks)
        assert len(classes) == len(set(classes)), "a device meets a class once when the pool allows"
    shared = [d for d in cams if d.shared]
    assert len(shared) == 2 and shared[0].tasks == shared[1].tasks
    assert len({str(d.tasks) for d in cams if not d.shared}) == 6


def test_dirichlet_partition_is_what_each_node_loads(tmp_path):
    """The plan's classes per device are the classes the node's own data.partition holds items of; the
    parts of a class are disjoint and together hold all of its training items."""
    data = scenario()
    data["devices"][0].update(count=5, partition={"kind": "dirichlet", "alpha": 0.5, "classes_per_task": 2,
                                                  "tasks": 2, "min_items": 4})
    plan = make_plan(parse_scenario(data))
    cams = [d for d in plan.devices if d.group == "cams"]
    assert {d.config["data"]["partition"]["index"] for d in cams} == set(range(5))
    catalog = load_catalog("digits")
    for c in ("0", "7"):
        train = split_items(catalog.by_class()[c], SplitSpec(), 0, c)["train"]
        parts = []
        for i in range(5):
            from crossback.data.partition import take_part
            parts.append(take_part(train, ItemPartition(5, i, 0.5, plan.seed), c))
        ids = [it.item_id for p in parts for it in p]
        assert len(ids) == len(set(ids)) == len(train)
        assert max(map(len, parts)) > 2 * min(map(len, parts)), "Dirichlet(0.5) shares are skewed"
    from crossback.data.prepare import prepare_tasks

    d = cams[0]
    cfg = {**d.config, "node": {**d.config["node"], "node_id": d.device}}
    path = write(tmp_path, cfg, "node.yaml")
    tasks, infos = prepare_tasks(load_node_config(path).run)
    assert [t.classes for t in tasks] == [t_["classes"] for t_ in d.tasks]
    assert all(info["items"]["train"] >= 2 * 4 for info in infos)


def test_a_partition_that_leaves_a_class_empty_is_named():
    from crossback.config.data import TaskSpec, View
    from crossback.data.tasks import build_task

    catalog = load_catalog("digits")
    with pytest.raises(DataError, match="holds no train or no val item of class"):
        for i in range(200):  # some part of a tiny alpha holds nothing of some class
            build_task(catalog, TaskSpec("t", classes=("0", "1")), SplitSpec(), View("image", 8, 1), 0,
                       partition=ItemPartition(200, i, 0.01, 0))


def test_timeline_expands_durations_and_resolves_targets():
    sc = parse_scenario(scenario(timeline=[
        {"at": 10, "do": "crash", "target": "cams-1", "duration": 15},
        {"at": 12, "do": "pause", "target": "phones", "duration": 5},
        {"at": 30, "do": "partition", "sides": [["cams"], ["phones-0"]], "duration": 20},
        {"at": 40, "do": "link", "target": "cams-0", "link": "3g", "duration": 10},
        {"at": 60, "do": "leave", "target": "phones-1"}]))
    plan = make_plan(sc)
    seen = [(e.at, e.do, e.devices, e.link) for e in plan.events if e.source.startswith("timeline")]
    assert (10, "crash", ("cams-1",), None) in seen and (25, "restart", ("cams-1",), None) in seen
    phones = ("phones-0", "phones-1")
    assert (12, "pause", phones, None) in seen and (17, "resume", phones, None) in seen
    assert (40, "link", ("cams-0",), "3g") in seen and (50, "link", ("cams-0",), "lte") in seen
    assert (60, "leave", ("phones-1",), None) in seen and not any(e[0] > 60 and e[2] == ("phones-1",) for e in seen)
    part = [e for e in plan.events if e.do in ("partition", "heal")]
    assert [(e.at, e.do) for e in part] == [(30, "partition"), (50, "heal")]
    assert part[0].sides == (("cams-0", "cams-1", "cams-2", "cams-3"), ("phones-0",))
    assert [e.at for e in plan.events] == sorted(e.at for e in plan.events)


def test_churn_is_seeded_alternates_and_stays_within_the_run():
    sc = parse_scenario(scenario(duration=600, churn=[{"model": "exponential", "target": "cams", "mean_on": 60,
                                                       "mean_off": 20, "action": "leave", "start": 30}]))
    plan = make_plan(sc)
    for d in (x.device for x in plan.devices if x.group == "cams"):
        mine = [e for e in plan.events if e.source == "churn[0]" and e.devices == (d,)]
        assert mine and all(30 <= e.at < 600 for e in mine)
        assert [e.do for e in mine] == ["leave", "join"] * (len(mine) // 2) + ["leave"] * (len(mine) % 2)


def test_trace_churn_replaces_the_join_and_names_bad_lines(tmp_path):
    trace = tmp_path / "avail.csv"
    trace.write_text("device,on,off\ncams-0,5,50\ncams-0,80,\nphones-1,0,30\n", encoding="utf-8")
    plan = make_plan(load_scenario(write(tmp_path, scenario(churn=[{"model": "trace", "file": "avail.csv"}]))))
    cam0 = [(e.at, e.do) for e in plan.events if "cams-0" in e.devices]
    assert cam0 == [(5, "join"), (50, "crash"), (80, "restart")]
    assert [(e.at, e.do) for e in plan.events if "phones-1" in e.devices] == [(0, "join"), (30, "crash")]
    trace.write_text("device,on,off\ncams-0,5,50\ncams-9,1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"avail.csv:3: unknown device 'cams-9'"):
        make_plan(load_scenario(write(tmp_path, scenario(churn=[{"model": "trace", "file": "avail.csv"}]))))
    trace.write_text("cams-0,5,50\ncams-0,40,60\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"avail.csv:2: cams-0's periods overlap"):
        make_plan(load_scenario(write(tmp_path, scenario(churn=[{"model": "trace", "file": "avail.csv"}]))))


def test_arrivals_are_scheduled_or_poisson_per_device():
    data = scenario()
    data["devices"][0]["arrivals"] = {"kind": "poisson", "first": 5, "mean_gap": 30}
    data["devices"][1]["arrivals"] = {"kind": "scheduled", "at": [12]}
    plan = make_plan(parse_scenario(data))
    cams = [d.arrivals for d in plan.devices if d.group == "cams"]
    assert all(a[0] == 5 and a[1] > 5 for a in cams) and len(set(cams)) == 4
    assert all(d.arrivals == (12.0,) for d in plan.devices if d.group == "phones")


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_example_scenario_plans_and_its_node_configs_load(tmp_path, path):
    plan = make_plan(load_scenario(path))
    assert plan.devices and plan.digest == make_plan(load_scenario(path)).digest
    for d in plan.devices[:3]:
        cfg = {**d.config, "node": {**d.config["node"], "node_id": d.device, "task_arrivals": list(d.arrivals)}}
        node = load_node_config(write(tmp_path, cfg, f"{d.device}.yaml"))
        assert node.node.task_arrivals == d.arrivals and len(node.run.tasks) == len(d.tasks)


def test_node_task_arrivals_are_checked(tmp_path):
    cfg = {"data": {"source": "digits", "image_size": 8}, "model": {"image": {"channels": 1, "patch_size": 2}},
           "tasks": [{"name": "a", "classes": ["0", "1"]}], "node": {"node_id": "n", "task_arrivals": [0, 5]}}
    with pytest.raises(ConfigError, match="node.task_arrivals: 2 times for 1 task"):
        load_node_config(write(tmp_path, cfg))
    cfg["tasks"].append({"name": "b", "classes": ["2", "3"]})
    cfg["node"]["task_arrivals"] = [5, 0]
    with pytest.raises(ConfigError, match="in order"):
        load_node_config(write(tmp_path, cfg))


def test_presets_cover_the_documented_links():
    from crossback.config.presets import PRESETS

    lte = PRESETS["links"]["lte"]
    assert lte.down_mbit > lte.up_mbit and lte.latency_ms > PRESETS["links"]["wifi"].latency_ms
    assert all(p.memory_mib is None or p.memory_mib >= 1024 for p in PRESETS["profiles"].values())
    assert dataclasses.asdict(PRESETS["profiles"]["rpi4"])["cpus"] == 0.25


def test_every_plaintext_caller_behind_the_relay_shares_one_address_so_one_share_is_the_pool():
    data = scenario()
    data["devices"][0]["overrides"] = {"node": {"expensive": {"slots": 3}}}
    data["devices"][1]["overrides"] = {"node": {"expensive": {"per_caller": 1}}}
    plan = make_plan(parse_scenario(data))
    by_group = {d.group: d.config["node"]["expensive"] for d in plan.devices}
    first, second = (data["devices"][i]["name"] for i in (0, 1))
    assert by_group[first] == {"slots": 3, "per_caller": 7}  # 3 running + 4 waiting
    assert by_group[second] == {"per_caller": 1}  # what the scenario says stands
