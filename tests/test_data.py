"""Data: the bundled emoji pairs, splits by item, the folder format and the papers' layouts."""
import pickle

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from crossback.data.build_emoji import collapse_key
from crossback.config.errors import DataError
from crossback.data.papers import load_cifar100, load_cub200, load_oxford102
from crossback.data.sources import load_catalog
from crossback.config.data import SplitSpec, TaskSpec
from crossback.data.tasks import build_task, split_items
from crossback.config.data import View

IMAGE = View("image", image_size=16)
TEXT = View("text", text_max_length=40)


# ------------------------------------------------------------------ bundled emoji


def test_variants_collapse_onto_their_base_emoji():
    runner, woman_runner, dark_man_runner = [0x1F3C3], [0x1F3C3, 0x200D, 0x2640, 0xFE0F], [0x1F3C3, 0x1F3FF, 0x200D, 0x2642, 0xFE0F]
    assert collapse_key(runner) == collapse_key(woman_runner) == collapse_key(dark_man_runner)
    woman_technologist, technologist = [0x1F469, 0x200D, 0x1F4BB], [0x1F9D1, 0x200D, 0x1F4BB]
    assert collapse_key(woman_technologist) == collapse_key(technologist)
    assert collapse_key([0x1F600]) != collapse_key([0x1F603])


def test_emoji_items_pair_images_with_names(emoji_catalog):
    items = emoji_catalog.items
    assert len(items) > 1500
    assert all(len(i.images) == len(i.texts) >= 1 for i in items)
    assert all(img.shape == (32, 32, 3) and img.dtype == np.uint8 for img in items[0].images)
    runner = next(i for i in items if "person running" in i.texts)
    assert any("woman running" in t for t in runner.texts) and any("skin tone" in t for t in runner.texts)
    assert "Component" not in emoji_catalog.superclasses()
    assert emoji_catalog.notes["meta"]["license"]


def test_image_and_text_views_of_a_superclass_are_parallel(emoji_catalog):
    img, img_info = build_task(emoji_catalog, TaskSpec("Food & Drink"), SplitSpec(), IMAGE, seed=0)
    txt, txt_info = build_task(emoji_catalog, TaskSpec("Food & Drink"), SplitSpec(), TEXT, seed=0)
    assert img.classes == txt.classes and img_info["items"] == txt_info["items"]
    assert img.train.inputs.shape[1:] == (3, 16, 16) and txt.train.inputs.dtype.is_floating_point is False


def test_small_classes_are_dropped_from_superclass_tasks(emoji_catalog):
    _, info = build_task(emoji_catalog, TaskSpec("Smileys & Emotion"), SplitSpec(min_items_per_class=4), IMAGE, 0)
    assert "face-hat" in info["dropped_classes"]  # 3 items cannot make train/val/test + margin
    assert "face-hat" not in info["classes"]


def test_splits_are_disjoint_by_item_and_deterministic(emoji_catalog):
    items = emoji_catalog.by_class()["face-smiling"]
    a = split_items(items, SplitSpec(), seed=5, label="face-smiling")
    b = split_items(items, SplitSpec(), seed=5, label="face-smiling")
    c = split_items(items, SplitSpec(), seed=6, label="face-smiling")
    ids = {k: {i.item_id for i in v} for k, v in a.items()}
    assert ids == {k: {i.item_id for i in v} for k, v in b.items()}
    assert ids != {k: {i.item_id for i in v} for k, v in c.items()}
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"]) and not (ids["train"] & ids["val"])
    assert sum(map(len, ids.values())) == len(items)


def test_digits_explicit_class_lists(digits_tasks):
    assert [t.num_classes for t in digits_tasks] == [3, 3, 4]
    assert digits_tasks[0].train.inputs.shape[1:] == (1, 8, 8)
    assert set(digits_tasks[2].test.labels.tolist()) == {0, 1, 2, 3}


# ------------------------------------------------------------------ task errors


def test_unknown_class_and_superclass_are_named(emoji_catalog):
    with pytest.raises(DataError, match="unknown class 'face-smilng'.*face-smiling"):
        build_task(emoji_catalog, TaskSpec("t", classes=("face-smilng", "heart")), SplitSpec(), IMAGE, 0)
    with pytest.raises(DataError, match="unknown superclass 'Food'"):
        build_task(emoji_catalog, TaskSpec("Food"), SplitSpec(), IMAGE, 0)


def test_missing_dataset_root_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        load_catalog("folder", tmp_path / "nowhere")
    with pytest.raises(DataError, match="data.root is required"):
        load_catalog("cifar100")


# ------------------------------------------------------------------ folder format


def make_folder(root, classes=("cat", "dog"), n=4):
    for cls in classes:
        d = root / "animals" / cls
        d.mkdir(parents=True)
        for k in range(n):
            color = (40 * k, 200 if cls == "cat" else 20, 90)
            Image.new("RGB", (20, 12), color).save(d / f"{cls}{k}.png")
            (d / f"{cls}{k}.txt").write_text(f"a {cls} number {k}\n\nanother {cls} caption\n")
    return root


def test_folder_pairs_images_and_captions_by_stem(tmp_path):
    catalog = load_catalog("folder", make_folder(tmp_path))
    assert catalog.superclasses() == {"animals": ["cat", "dog"]}
    item = catalog.by_class()["cat"][0]
    assert len(item.images) == 1 and item.texts == ("a cat number 0", "another cat caption")
    img, _ = build_task(catalog, TaskSpec("animals"), SplitSpec(), IMAGE, 0)
    txt, _ = build_task(catalog, TaskSpec("animals"), SplitSpec(), TEXT, 0)
    assert img.train.inputs.shape[1:] == (3, 16, 16)  # resized from 20x12
    assert len(txt.train) == 2 * len(img.train)  # two captions per item


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path)
    (root / "animals" / "cat" / "cat1.png").write_bytes(b"not a png")
    catalog = load_catalog("folder", root)
    with pytest.raises(DataError, match="cat1.png"):
        build_task(catalog, TaskSpec("animals"), SplitSpec(), IMAGE, 0)


def test_class_with_no_items_of_the_modality(tmp_path):
    root = make_folder(tmp_path)
    for f in (root / "animals" / "dog").glob("*.png"):
        f.unlink()
    catalog = load_catalog("folder", root)
    with pytest.raises(DataError, match="class 'dog' has no items with a image view"):
        build_task(catalog, TaskSpec("t", classes=("cat", "dog")), SplitSpec(), IMAGE, 0)


# ------------------------------------------------------------------ CIFAR-100 (python pickle layout)


def write_cifar(root, per_class=4):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    fine = [f"fine{i}" for i in range(10)]
    coarse = ["coarse0", "coarse1"]
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        labels = [i for i in range(10) for _ in range(per_class)]
        data = rng.integers(0, 255, (len(labels), 3072), dtype=np.uint8)
        payload = {b"data": data, b"fine_labels": labels, b"coarse_labels": [l // 5 for l in labels],
                   b"filenames": [b"x.png"] * len(labels)}
        (base / split).write_bytes(pickle.dumps(payload))
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": fine, b"coarse_label_names": coarse}))
    return root


def test_cifar100_reader_keeps_the_official_test_split(tmp_path):
    catalog = load_cifar100(write_cifar(tmp_path))
    assert catalog.superclasses() == {"coarse0": [f"fine{i}" for i in range(5)], "coarse1": [f"fine{i}" for i in range(5, 10)]}
    task, info = build_task(catalog, TaskSpec("coarse1"), SplitSpec(), IMAGE, 0)
    assert info["items"]["test"] == 5 * 4 and task.num_classes == 5
    assert info["items"]["train"] + info["items"]["val"] == 5 * 4


def test_cifar100_reader_refuses_code_in_the_pickle(tmp_path):
    root = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned",))

    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"fine_label_names": Evil()}))
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar100(root)


# ------------------------------------------------------------------ CUB-200-2011


def write_cub(root):
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross", "004.Groove_billed_Ani"]
    lines = {"images": [], "labels": [], "split": []}
    image_id = 0
    for c, cls in enumerate(classes, 1):
        (base / "images" / cls).mkdir(parents=True)
        (root / "text_c10" / cls).mkdir(parents=True)
        for k in range(5):
            image_id += 1
            rel = f"{cls}/{cls.split('.')[1]}_{k:04d}.jpg"
            Image.new("RGB", (30, 20), (c * 50, k * 40, 0)).save(base / "images" / rel)
            (root / "text_c10" / rel).with_suffix(".txt").write_text("\n".join(f"bird {c} caption {j}" for j in range(10)))
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {c}")
            lines["split"].append(f"{image_id} {1 if k < 3 else 0}")
    (base / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{i} {c}" for i, c in enumerate(classes, 1)) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    return root


def test_cub_reader_families_captions_and_split(tmp_path):
    catalog = load_cub200(write_cub(tmp_path))
    assert catalog.superclasses()["Albatross"] == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    spec = TaskSpec("albatrosses", superclass="Albatross")
    split = SplitSpec(min_items_per_class=3)
    img, info = build_task(catalog, spec, split, IMAGE, 0)
    txt, _ = build_task(catalog, spec, split, TEXT, 0)
    assert info["items"] == {"train": 6, "val": 3, "test": 6}
    assert len(txt.test) == 10 * len(img.test)  # ten captions per test image


# ------------------------------------------------------------------ Oxford-102


def write_oxford(root, classes=3, per_class=5):
    (root / "jpg").mkdir(parents=True)
    labels = [c for c in range(1, classes + 1) for _ in range(per_class)]
    for idx, label in enumerate(labels, 1):
        Image.new("RGB", (24, 24), (label * 60, idx * 10, 30)).save(root / "jpg" / f"image_{idx:05d}.jpg")
        cap = root / "text_c10" / f"class_{label:05d}"
        cap.mkdir(parents=True, exist_ok=True)
        (cap / f"image_{idx:05d}.txt").write_text(f"a flower of kind {label}\npetals number {idx}\n")
    ids = np.arange(1, len(labels) + 1)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    savemat(root / "setid.mat", {"trnid": ids[ids % 5 < 3][None], "valid": ids[ids % 5 == 3][None], "tstid": ids[ids % 5 == 4][None]})
    return root


def test_oxford102_reader_uses_setid_and_captions(tmp_path):
    catalog = load_oxford102(write_oxford(tmp_path))
    assert catalog.superclasses() == {"flowers_001_010": ["class_001", "class_002", "class_003"]}
    img, info = build_task(catalog, TaskSpec("flowers_001_010"), SplitSpec(), IMAGE, 0)
    txt, _ = build_task(catalog, TaskSpec("flowers_001_010"), SplitSpec(), TEXT, 0)
    assert info["items"] == {"train": 9, "val": 3, "test": 3}
    assert len(txt.train) == 2 * len(img.train)


def test_oxford102_missing_file_is_named(tmp_path):
    root = write_oxford(tmp_path)
    (root / "setid.mat").unlink()
    with pytest.raises(DataError, match="setid.mat"):
        load_oxford102(root)


def test_digits_are_read_without_importing_scikit_learn_and_equal_its_loader():
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits as sk_digits

    from crossback.data.bundled_sources import load_digits

    catalog, reference = load_digits(), sk_digits()
    assert len(catalog.items) == len(reference.target) == 1797
    expected = np.clip(reference.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    assert all(np.array_equal(item.images[0], expected[i]) and item.label == str(reference.target[i])
               for i, item in enumerate(catalog.items))
    probe = "import sys; from crossback.data.sources import load_catalog; load_catalog('digits'); " \
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_bundled_fashion_subset_is_the_first_300_items_of_each_class_and_builds_tasks():
    import numpy as np

    from crossback.data.sources import load_catalog
    from crossback.config.data import SplitSpec, TaskSpec
    from crossback.data.tasks import build_task
    from crossback.config.data import View

    catalog = load_catalog("fashion")
    by_class = catalog.by_class()
    assert len(catalog.items) == 3000 and sorted(len(v) for v in by_class.values()) == [300] * 10
    assert set(catalog.superclasses()) == {"fashion"} and set(catalog.superclasses()["fashion"]) == set(by_class)
    image = catalog.items[0].images[0]
    assert isinstance(image, np.ndarray) and image.shape == (28, 28) and image.dtype == np.uint8
    data, info = build_task(catalog, TaskSpec("wear", classes=("Trouser", "Dress", "Coat")), SplitSpec(),
                            View("image", image_size=14, channels=1), seed=0)
    assert info["classes"] == ["Trouser", "Dress", "Coat"] and data.train.inputs.shape[-1] == 14


# ------------------------------------------------------------------ bundled glyphs (the held-out set)


def test_the_bundled_glyphs_pair_each_code_point_with_a_caption_that_does_not_name_its_class():
    from crossback.data.build_glyphs import BLOCKS

    catalog = load_catalog("glyphs")
    assert len(catalog.items) == catalog.notes["meta"]["items"] > 3000
    assert set(catalog.superclasses()) == {"scripts", "symbols"}
    assert {b.label for b in BLOCKS} == set(catalog.by_class())
    assert len({i.item_id for i in catalog.items}) == len(catalog.items)  # one item per code point
    leaks = {b.label: set(b.leaks) for b in BLOCKS}
    for item in catalog.items:
        (text,) = item.texts
        assert text and text == text.lower() and not set(text.split()) & leaks[item.label], (item.item_id, text)
        assert 1 <= len(item.images) <= 8 and all(img.shape == (32, 32) and img.dtype == np.uint8 for img in item.images)
    alpha = next(i for i in catalog.items if i.item_id == f"glyph-{0x3B1:05x}")
    assert alpha.label == "greek" and alpha.texts == ("small letter alpha",)
    for view in (IMAGE, TEXT):  # both views of a superclass are tasks
        data, info = build_task(catalog, TaskSpec("scripts"), SplitSpec(), view, seed=0)
        assert len(info["classes"]) == 12 and len(data.test) > 100


def test_the_glyph_set_rebuilds_bit_identically_from_the_fonts(tmp_path):
    from crossback.data.build_glyphs import FONT_DIR, REFERENCE_FACE, build
    from crossback.data.bundled_sources import GLYPHS_FILE

    if not (FONT_DIR / f"{REFERENCE_FACE}.ttf").exists():
        pytest.skip("the DejaVu fonts are not installed (apt-get install fonts-dejavu-core fonts-dejavu-extra)")
    build(tmp_path / "glyphs.npz", 32)
    with np.load(GLYPHS_FILE) as bundled, np.load(tmp_path / "glyphs.npz") as rebuilt:
        if str(bundled["meta_json"]) != str(rebuilt["meta_json"]):
            pytest.skip("another version of the fonts or of Python's Unicode tables is installed")
        assert all(np.array_equal(bundled[k], rebuilt[k]) for k in bundled.files)
