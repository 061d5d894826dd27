"""DatasetCatalog / MetadataCatalog: registration, lookup, built-in names, id maps."""
import os
import uuid

import pytest

from detgn.data import DatasetCatalog, MetadataCatalog, register_coco_instances
from detgn.data.catalog import Metadata, datasets_root


def _name(prefix="t"):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_register_get_list_remove():
    name = _name()
    DatasetCatalog.register(name, lambda: [{"file_name": "a.jpg", "image_id": 1}])
    try:
        assert name in DatasetCatalog.list()
        assert DatasetCatalog.get(name)[0]["image_id"] == 1
        with pytest.raises(ValueError, match="already registered"):
            DatasetCatalog.register(name, lambda: [])
    finally:
        DatasetCatalog.remove(name)
    assert name not in DatasetCatalog.list()


def test_unknown_name_lists_close_matches():
    with pytest.raises(KeyError) as e:
        DatasetCatalog.get("coco_2017_trian")
    assert "coco_2017_train" in str(e.value) and "register_coco_instances" in str(e.value)


def test_registered_function_must_return_list():
    name = _name()
    DatasetCatalog.register(name, lambda: {"not": "a list"})
    try:
        with pytest.raises(TypeError, match=name):
            DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)


def test_builtin_names_registered():
    for name in ("coco_2017_train", "coco_2017_val", "synthetic_train", "synthetic_val"):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco"


def test_builtin_paths_follow_env_at_lookup_time(monkeypatch, tmp_path):
    monkeypatch.setenv("DETGN_DATASETS", str(tmp_path / "a"))
    meta = MetadataCatalog.get("coco_2017_val")
    assert meta.json_file == os.path.join(str(tmp_path / "a"), "coco/annotations/instances_val2017.json")
    assert meta.image_root == os.path.join(str(tmp_path / "a"), "coco/val2017")
    monkeypatch.setenv("DETGN_DATASETS", str(tmp_path / "b"))
    assert MetadataCatalog.get("synthetic_train").json_file == os.path.join(
        str(tmp_path / "b"), "synthetic/annotations/instances_train.json"
    )
    monkeypatch.delenv("DETGN_DATASETS")
    assert datasets_root() == os.path.abspath("datasets")


def test_missing_builtin_set_says_where_and_how(monkeypatch, tmp_path):
    monkeypatch.setenv("DETGN_DATASETS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get("synthetic_val")
    msg = str(e.value)
    assert str(tmp_path) in msg and "prepare_synthetic.py" in msg and "DETGN_DATASETS" in msg


def test_builtin_set_loads_from_env_folder(monkeypatch, tmp_path, tiny_coco):
    root = tmp_path / "ds"
    (root / "synthetic" / "annotations").mkdir(parents=True)
    os.symlink(tiny_coco.image_root, root / "synthetic" / "val")
    os.symlink(tiny_coco.json_file, root / "synthetic" / "annotations" / "instances_val.json")
    monkeypatch.setenv("DETGN_DATASETS", str(root))
    records = DatasetCatalog.get("synthetic_val")
    assert len(records) == 6
    assert records[0]["file_name"].startswith(str(root / "synthetic" / "val"))
    assert MetadataCatalog.get("synthetic_val").thing_classes == ["square", "triangle", "blob"]


def test_register_coco_instances_metadata(tiny_coco):
    name = _name("tiny")
    register_coco_instances(name, tiny_coco.json_file, tiny_coco.image_root)
    try:
        meta = MetadataCatalog.get(name)
        # Readable before the records are loaded (an evaluator may ask first).
        assert meta.thing_classes == ["square", "triangle", "blob"]
        assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 12: 2}
        assert meta.contiguous_id_to_dataset_id == {0: 3, 1: 7, 2: 12}
        assert meta.json_file == os.path.abspath(tiny_coco.json_file)
        assert meta.image_root == os.path.abspath(tiny_coco.image_root)
        records = DatasetCatalog.get(name)
        cats = {a["category_id"] for r in records for a in r["annotations"]}
        assert cats == {0, 1, 2}
        assert DatasetCatalog.accepts(name, "on_bad")
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_metadata_refuses_conflicting_values():
    meta = Metadata("m")
    meta.set(thing_classes=["a", "b"])
    meta.set(thing_classes=["a", "b"])  # same value is fine
    with pytest.raises(ValueError, match="thing_classes"):
        meta.thing_classes = ["b", "a"]
    with pytest.raises(AttributeError, match="has no attribute 'json_file'"):
        meta.json_file
    assert meta.get("json_file", "dflt") == "dflt"
