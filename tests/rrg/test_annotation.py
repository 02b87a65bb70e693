"""Reading an R2Gen-layout annotation file (`camegrad_jax.rrg._annotation`, through
`camegrad_jax.rrg.data`): both datasets' layouts, 16-bit images, labels filled by a labeler,
and malformed input named by entry and field."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from camegrad_jax.rrg.data import AnnotationError, load_dataset, read_annotation
from camegrad_jax.rrg.synthetic import (
    SyntheticConfig,
    generate_synthetic,
    synthetic_dataset,
    write_r2gen_layout,
)

REPORTS = ("The heart is normal. No effusion.", "Small left effusion. No pneumothorax.")


def _labels(i):
    return [(i + j) % 4 for j in range(14)]


def write_fixture(root, views=2, per_split=3, with_labels=True):
    """R2Gen layout by hand: RGB PNGs of 40x30 pixels (converted and resized by the loader)."""
    annotation = {}
    for split in ("train", "val", "test"):
        annotation[split] = []
        for i in range(per_split):
            study = f"CXR{split}{i}_IM-000{i}"
            (root / "images" / study).mkdir(parents=True)
            paths = []
            for view in range(views):
                colour = (40 * i + 10 * view, 100, 200 - 30 * view)
                Image.new("RGB", (40, 30), colour).save(root / "images" / study / f"{view}.png")
                paths.append(f"{study}/{view}.png")
            entry = {"id": study, "report": REPORTS[i % 2], "image_path": paths, "split": split}
            if with_labels:
                entry["labels"] = _labels(i)
            annotation[split].append(entry)
    (root / "annotation.json").write_text(json.dumps(annotation))
    return annotation


@pytest.mark.parametrize(("dataset_name", "views"), [("iu_xray", 2), ("mimic_cxr", 1)])
def test_loads_r2gen_layout(tmp_path, dataset_name, views):
    write_fixture(tmp_path, views=views)
    raw = read_annotation(tmp_path / "annotation.json", dataset_name=dataset_name, image_size=16)
    assert raw["val"].ids == ("CXRval0_IM-0000", "CXRval1_IM-0001", "CXRval2_IM-0002")
    assert raw["train"].images.shape == (3, views, 16, 16)
    assert raw["train"].labels.tolist() == [_labels(i) for i in range(3)]
    assert raw["test"].reports == (REPORTS[0], REPORTS[1], REPORTS[0])
    # Grayscale as Pillow's "L" conversion: (299 R + 587 G + 114 B) / 1000, then / 255.
    r, g, b = 40, 100, 200
    expected = round((299 * r + 587 * g + 114 * b) / 1000) / 255
    assert np.allclose(raw["train"].images[1, 0], expected, atol=1e-6)

    ds = load_dataset(
        tmp_path / "annotation.json", dataset_name=dataset_name, image_size=16, max_len=8
    )
    train = ds.splits["train"]
    assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
    assert abs(train.images.mean()) < 1e-5 and abs(train.images.std() - 1) < 1e-4
    assert ds.image_mean == pytest.approx(raw["train"].images.mean(), abs=1e-6)
    assert train.tokens.shape == (3, 8) and train.tokens.dtype == np.int32
    assert ds.tokenizer.dataset_name == dataset_name and ds.num_views == views


def test_image_dir_and_16_bit_png(tmp_path):
    write_fixture(tmp_path, views=1)
    moved = tmp_path / "elsewhere"
    (tmp_path / "images").rename(moved)
    pixels = np.full((20, 20), 30000, dtype=np.uint16)
    Image.fromarray(pixels).save(moved / "CXRtrain0_IM-0000" / "0.png")
    raw = read_annotation(tmp_path / "annotation.json", moved, dataset_name="mimic_cxr")
    assert np.allclose(raw["train"].images[0], 30000 / 65535, atol=1e-6)


@pytest.mark.parametrize("views", [1, 2])
def test_round_trip_with_synthetic_writer(tmp_path, views):
    config = SyntheticConfig(
        seed=2, num_train=6, num_val=2, num_test=2, image_size=32, num_views=views
    )
    generated = generate_synthetic(config)
    ann_path = write_r2gen_layout(config, tmp_path)
    assert ann_path == tmp_path / "annotation.json"
    stored = json.loads(ann_path.read_text())
    assert sorted(stored) == ["test", "train", "val"]
    assert set(stored["train"][0]) == {"id", "report", "image_path", "split", "labels"}
    raw = read_annotation(ann_path, dataset_name=config.dataset_name, image_size=32)
    for split in ("train", "val", "test"):
        assert raw[split].ids == generated[split].ids
        assert raw[split].reports == generated[split].reports
        assert np.array_equal(raw[split].labels, generated[split].labels)
        assert np.abs(raw[split].images - generated[split].images).max() <= 0.5 / 255 + 1e-6
    from_disk = load_dataset(ann_path, dataset_name=config.dataset_name, image_size=32)
    in_memory = synthetic_dataset(config)
    assert from_disk.tokenizer == in_memory.tokenizer
    assert np.array_equal(from_disk.splits["val"].tokens, in_memory.splits["val"].tokens)


def test_label_fn_fills_missing_labels(tmp_path):
    write_fixture(tmp_path, with_labels=False)
    seen = []

    def label_fn(reports):
        seen.extend(reports)
        return np.array([[1 if "effusion." in r.lower() else 0] * 14 for r in reports])

    raw = read_annotation(tmp_path / "annotation.json", image_size=8, label_fn=label_fn)
    assert len(seen) == 9 and seen[:3] == [REPORTS[0], REPORTS[1], REPORTS[0]]
    assert raw["train"].labels[:, 0].tolist() == [1, 1, 1]
    assert raw["train"].labels.dtype == np.int32


@pytest.mark.parametrize(
    ("output", "match"),
    [(np.zeros((3, 13)), "shape"), (np.full((3, 14), 4), "expected values")],
)
def test_bad_label_fn_output_is_reported(tmp_path, output, match):
    write_fixture(tmp_path, with_labels=False)
    with pytest.raises(AnnotationError, match=match) as error:
        read_annotation(tmp_path / "annotation.json", image_size=8, label_fn=lambda r: output)
    assert error.value.field == "labels"


# Each malformed variant: (mutation of the annotation dict or files, entry id, field, message).
def _drop(key):
    def mutate(annotation, root):
        del annotation["train"][1][key]

    return mutate


def _set(key, value, split="train", index=1):
    def mutate(annotation, root):
        annotation[split][index][key] = value

    return mutate


def _delete_image(annotation, root):
    (root / "images" / "CXRtrain1_IM-0001" / "1.png").unlink()


def _corrupt_image(annotation, root):
    (root / "images" / "CXRtrain1_IM-0001" / "0.png").write_bytes(b"not a png")


def _empty_split(annotation, root):
    annotation["val"] = []


def _missing_split(annotation, root):
    del annotation["test"]


def _duplicate_id(annotation, root):
    annotation["test"][0]["id"] = "CXRtrain1_IM-0001"


MALFORMED = {
    "missing id": (_drop("id"), "#1", "id", "missing"),
    "missing report": (_drop("report"), "CXRtrain1_IM-0001", "report", "missing"),
    "missing image_path": (_drop("image_path"), "CXRtrain1_IM-0001", "image_path", "missing"),
    "missing split field": (_drop("split"), "CXRtrain1_IM-0001", "split", "missing"),
    "missing image file": (_delete_image, "CXRtrain1_IM-0001", "image_path", "not found"),
    "unreadable image": (_corrupt_image, "CXRtrain1_IM-0001", "image_path", "cannot read"),
    "one view for iu_xray": (
        _set("image_path", ["CXRtrain1_IM-0001/0.png"]),
        "CXRtrain1_IM-0001",
        "image_path",
        "expected 2 view",
    ),
    "image_path not a list": (
        _set("image_path", "CXRtrain1_IM-0001/0.png"),
        "CXRtrain1_IM-0001",
        "image_path",
        "list",
    ),
    "13 labels": (_set("labels", [0] * 13), "CXRtrain1_IM-0001", "labels", "13 values"),
    "label 4": (_set("labels", [0] * 13 + [4]), "CXRtrain1_IM-0001", "labels", "found 4"),
    "label -1": (_set("labels", [-1] + [0] * 13), "CXRtrain1_IM-0001", "labels", "found -1"),
    "float label": (_set("labels", [1.0] + [0] * 13), "CXRtrain1_IM-0001", "labels", "1.0"),
    "bool label": (_set("labels", [True] + [0] * 13), "CXRtrain1_IM-0001", "labels", "True"),
    "labels not a list": (_set("labels", "0" * 14), "CXRtrain1_IM-0001", "labels", "str"),
    "empty split": (_empty_split, None, "val", "empty split"),
    "missing split": (_missing_split, None, "test", "missing split"),
    "integer report": (_set("report", 7), "CXRtrain1_IM-0001", "report", "int"),
    "null report": (_set("report", None), "CXRtrain1_IM-0001", "report", "NoneType"),
    "blank report": (_set("report", "  "), "CXRtrain1_IM-0001", "report", "empty"),
    "wrong split field": (_set("split", "test"), "CXRtrain1_IM-0001", "split", "listed under"),
    "duplicate id": (_duplicate_id, "CXRtrain1_IM-0001", "id", "duplicate"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_input_names_entry_and_field(tmp_path, case):
    mutate, entry_id, field, message = MALFORMED[case]
    annotation = write_fixture(tmp_path)
    mutate(annotation, tmp_path)
    (tmp_path / "annotation.json").write_text(json.dumps(annotation))
    with pytest.raises(AnnotationError, match=message) as error:
        load_dataset(tmp_path / "annotation.json", dataset_name="iu_xray", image_size=8)
    assert (error.value.entry_id, error.value.field) == (entry_id, field)
    text = str(error.value)
    assert str(tmp_path / "annotation.json") in text and repr(field) in text
    if entry_id is not None:
        assert repr(entry_id) in text


def test_missing_labels_without_label_fn(tmp_path):
    write_fixture(tmp_path, with_labels=False)
    with pytest.raises(AnnotationError, match="label_fn") as error:
        read_annotation(tmp_path / "annotation.json", image_size=8)
    assert (error.value.entry_id, error.value.field) == ("CXRtrain0_IM-0000", "labels")


def test_bad_json_names_file_and_position(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text('{"train": [\n  {"id": "a",}\n]}')
    with pytest.raises(AnnotationError) as error:
        read_annotation(path)
    assert str(path) in str(error.value)
    assert "line 2, column 14" in str(error.value)
    with pytest.raises(AnnotationError, match="cannot read"):
        read_annotation(tmp_path / "absent.json")
