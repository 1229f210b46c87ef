import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from hcl_lightning.data import CocoBoxSource, make_synthetic_scenes
from hcl_lightning.data.synthetic import BACKGROUNDS, CATEGORY_IDS, CONTEXTS, SHAPES

PARAMS = {"n_images": 16, "image_size": 48, "max_objects": 5}


def snapshot(image_dir, ann_file):
    return ann_file.read_bytes(), {p.name: p.read_bytes() for p in sorted(image_dir.iterdir())}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = snapshot(*make_synthetic_scenes(tmp_path / "a", seed=1, **PARAMS))
    second = snapshot(*make_synthetic_scenes(tmp_path / "b", seed=1, **PARAMS))
    other = snapshot(*make_synthetic_scenes(tmp_path / "c", seed=2, **PARAMS))
    assert first == second
    assert first[0] != other[0]
    assert first[1]["000000.jpg"] != other[1]["000000.jpg"]


def test_annotations_are_coco_like(tmp_path):
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    coco = json.loads(ann_file.read_text())

    category_ids = [c["id"] for c in coco["categories"]]
    assert len(category_ids) >= 6
    assert category_ids != list(range(len(category_ids)))  # deliberately non-contiguous
    assert len({c["name"] for c in coco["categories"]}) == len(category_ids)

    per_image = Counter(a["image_id"] for a in coco["annotations"])
    assert len(coco["images"]) == PARAMS["n_images"]
    for image in coco["images"]:
        assert 1 <= image["num_objects"] <= PARAMS["max_objects"]
        assert per_image[image["id"]] == image["num_objects"]
        with Image.open(image_dir / image["file_name"]) as im:
            assert im.size == (image["width"], image["height"]) == (48, 48)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert ann["category_id"] in category_ids and ann["iscrowd"] == 0
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 48 and y + h <= 48
    assert len({a["category_id"] for a in coco["annotations"]}) > 3  # several classes used


def test_objects_are_drawn_in_their_class_colour(tmp_path):
    """The last object of an image is on top: a solid one shows its colour at its centre."""
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS, appearance="class")
    coco = json.loads(ann_file.read_text())
    colour_of = {
        cid: colour
        for cid, (name, colour, texture) in zip(CATEGORY_IDS, SHAPES, strict=True)
        if texture == "solid" and name != "ring"
    }
    last = {a["image_id"]: a for a in coco["annotations"]}
    checked = 0
    for image in coco["images"]:
        ann = last[image["id"]]
        if ann["category_id"] not in colour_of:
            continue
        x, y, w, h = ann["bbox"]
        pixels = np.asarray(Image.open(image_dir / image["file_name"]), dtype=float)
        centre = pixels[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2]
        assert np.abs(centre.mean(axis=(0, 1)) - colour_of[ann["category_id"]]).max() < 45
        checked += 1
    assert checked >= 3


def test_cached_when_complete_regenerated_otherwise(tmp_path):
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    image = image_dir / "000003.jpg"
    stamps = (ann_file.stat().st_mtime_ns, image.stat().st_mtime_ns)

    assert make_synthetic_scenes(tmp_path, **PARAMS) == (image_dir, ann_file)
    assert (ann_file.stat().st_mtime_ns, image.stat().st_mtime_ns) == stamps

    original = image.read_bytes()
    image.unlink()  # incomplete: regenerated identically
    make_synthetic_scenes(tmp_path, **PARAMS)
    assert image.read_bytes() == original

    make_synthetic_scenes(tmp_path, **{**PARAMS, "n_images": 20})  # other parameters
    assert len(json.loads(ann_file.read_text())["images"]) == 20
    assert json.loads((tmp_path / "meta.json").read_text())["n_images"] == 20


def test_goes_through_the_coco_reader(tmp_path):
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **PARAMS)
    source = CocoBoxSource(image_dir, ann_file)
    coco = json.loads(ann_file.read_text())
    assert len(source) == PARAMS["n_images"]
    assert source.num_classes == len(coco["categories"])
    assert sum(source.stats.values()) == 0
    assert sum(len(r.boxes) for r in source.records) == len(coco["annotations"])
    labels = np.concatenate([r.labels for r in source.records])
    assert labels.min() >= 0 and labels.max() < source.num_classes


# -- scene contexts and out-of-context objects ----------------------------------------
CONTEXT_PARAMS = {"n_images": 40, "image_size": 48, "contexts": True, "ooc_fraction": 0.3}


def test_default_output_is_unchanged(tmp_path, monkeypatch):
    """The class-look output with the other defaults (contexts off) is that of the
    version before contexts existed: hashes of its JSON and of the pixels handed to the
    JPEG encoder, recorded then."""
    import hashlib

    import hcl_lightning.data.synthetic as synthetic

    pixels = hashlib.sha256()
    fromarray = synthetic.Image.fromarray

    def recording_fromarray(array, *args, **kwargs):
        if array.shape[:2] == (48, 48):  # a whole image (not a background's coarse grid)
            pixels.update(np.ascontiguousarray(array).tobytes())
        return fromarray(array, *args, **kwargs)

    monkeypatch.setattr(synthetic.Image, "fromarray", recording_fromarray)
    _, ann_file = make_synthetic_scenes(
        tmp_path, n_images=6, image_size=48, seed=3, appearance="class"
    )
    assert hashlib.sha256(ann_file.read_bytes()).hexdigest() == (
        "325474e1b9314fafa45e5e3788164e65aa46244adb3874938da53b68162d833c"
    )
    assert pixels.hexdigest() == (
        "5cd6d82f3021ec2f6fb7fe3f2befe4be26e44d9ea2cb3bfd84c7a8b9d64afbea"
    )
    assert json.loads((tmp_path / "meta.json").read_text()) == {
        "format_version": 1, "n_images": 6, "image_size": 48, "seed": 3, "max_objects": 6
    }  # fmt: skip


def _by_image(coco: dict) -> dict[int, list[dict]]:
    grouped: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for ann in coco["annotations"]:
        grouped[ann["image_id"]].append(ann)
    return grouped


def test_out_of_context_count_and_classes(tmp_path):
    _, ann_file = make_synthetic_scenes(tmp_path, **CONTEXT_PARAMS)
    coco = json.loads(ann_file.read_text())
    typical = {c["name"]: set(c["category_ids"]) for c in coco["contexts"]}
    assert [c["name"] for c in coco["contexts"]] == [c.name for c in CONTEXTS]
    assert [c["background"] for c in coco["contexts"]] == list(BACKGROUNDS)
    all_typical = [cid for ids in typical.values() for cid in ids]
    assert sorted(all_typical) == sorted(CATEGORY_IDS)  # disjoint, every class used once

    flagged_images = 0
    for image in coco["images"]:
        anns = _by_image(coco)[image["id"]]
        assert image["num_objects"] == len(anns) >= 1
        assert coco["contexts"][image["context_id"] - 1]["name"] == image["context"]
        flags = [a["out_of_context"] for a in anns]
        assert set(flags) <= {0, 1} and sum(flags) <= 1
        flagged_images += sum(flags)
        for ann in anns:
            in_context = ann["category_id"] in typical[image["context"]]
            assert in_context != bool(ann["out_of_context"])
    assert flagged_images == round(0.3 * 40) == 12
    assert len({image["context"] for image in coco["images"]}) == len(CONTEXTS)

    for fraction, expected in ((0.0, 0), (1.0, 40), (0.51, 20)):  # round(20.4) = 20
        _, ann_file = make_synthetic_scenes(
            tmp_path / str(fraction), **{**CONTEXT_PARAMS, "ooc_fraction": fraction}
        )
        anns = json.loads(ann_file.read_text())["annotations"]
        assert sum(a["out_of_context"] for a in anns) == expected


#: Class colours of the shapes filled with one colour at their centre (not ring).
SOLID_COLOURS = {
    cid: colour
    for cid, (name, colour, texture) in zip(CATEGORY_IDS, SHAPES, strict=True)
    if texture == "solid" and name != "ring"
}


def _centre_colours(image_dir: Path, coco: dict, out_of_context_only: bool = False):
    """(category id, mean RGB of the 3x3 pixels at the box centre) of each solid object."""
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    for ann in coco["annotations"]:
        if ann["category_id"] not in SOLID_COLOURS:
            continue
        if out_of_context_only and not ann["out_of_context"]:
            continue
        x, y, w, h = ann["bbox"]
        pixels = np.asarray(Image.open(image_dir / files[ann["image_id"]]), dtype=float)
        centre = pixels[y + h // 2 - 1 : y + h // 2 + 2, x + w // 2 - 1 : x + w // 2 + 2]
        yield ann["category_id"], centre.mean(axis=(0, 1))


def test_out_of_context_object_is_drawn_on_top(tmp_path):
    """A solid out-of-context object shows its own colour at its centre."""
    image_dir, ann_file = make_synthetic_scenes(
        tmp_path, **{**CONTEXT_PARAMS, "ooc_fraction": 1.0}, appearance="class"
    )
    coco = json.loads(ann_file.read_text())
    checked = 0
    for cid, colour in _centre_colours(image_dir, coco, out_of_context_only=True):
        assert np.abs(colour - SOLID_COLOURS[cid]).max() < 45
        checked += 1
    assert checked >= 10


@pytest.mark.parametrize("contexts", [False, True])
def test_random_colours_leave_only_shape_to_tell_classes_apart(tmp_path, contexts):
    """With random_colours the colour of an object says nothing about its class: the
    spread of one class's colours (median absolute deviation) is that of uniform
    colours (64 for many objects), not that of the class colour's jitter; boxes, classes and contexts are drawn as usual."""
    params = {**CONTEXT_PARAMS, "ooc_fraction": 0.3 * contexts, "contexts": contexts}
    params["appearance"] = "class"  # one colour per class, or a random one
    spread = {}
    for random_colours in (False, True):
        root = tmp_path / str(random_colours)
        image_dir, ann_file = make_synthetic_scenes(root, random_colours=random_colours, **params)
        coco = json.loads(ann_file.read_text())
        by_class: dict[int, list[np.ndarray]] = {}
        for cid, colour in _centre_colours(image_dir, coco):
            by_class.setdefault(cid, []).append(colour)
        assert sum(len(colours) for colours in by_class.values()) >= 30
        spread[random_colours] = np.median(
            [np.median(np.abs(np.subtract(c, np.median(c, axis=0)))) for c in by_class.values()]
        )
        assert json.loads((root / "meta.json").read_text()).get("random_colours") == (
            True if random_colours else None
        )  # recorded only when used: default datasets keep their meta.json
        if contexts:
            typical = {c["id"]: set(c["category_ids"]) for c in coco["contexts"]}
            context_of = {image["id"]: image["context_id"] for image in coco["images"]}
            for ann in coco["annotations"]:
                in_context = ann["category_id"] in typical[context_of[ann["image_id"]]]
                assert in_context != bool(ann["out_of_context"])
    assert spread[False] < 15 < 35 < spread[True], spread


def test_context_backgrounds_differ(tmp_path):
    """Pixels outside every box lie in the context's palette; plain ones are flat."""
    image_dir, ann_file = make_synthetic_scenes(tmp_path, **CONTEXT_PARAMS)
    coco = json.loads(ann_file.read_text())
    means: dict[str, list[np.ndarray]] = {}
    for image in coco["images"]:
        pixels = np.asarray(Image.open(image_dir / image["file_name"]), dtype=float)
        free = np.ones(pixels.shape[:2], bool)
        for ann in _by_image(coco)[image["id"]]:
            x, y, w, h = ann["bbox"]
            free[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2] = False
        background = pixels[free]
        context = CONTEXTS[image["context_id"] - 1]
        median = np.median(background, axis=0)
        assert (median >= np.asarray(context.low) - 12).all(), (image, median)
        assert (median <= np.asarray(context.high) + 12).all(), (image, median)
        if BACKGROUNDS[context.background] == "plain":
            assert background.std(axis=0).max() < 14
        means.setdefault(context.name, []).append(background.mean(axis=0))
    centres = {name: np.mean(values, axis=0) for name, values in means.items()}
    names = sorted(centres)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(centres[a] - centres[b]).max() > 40, (a, b)


def test_contexts_are_deterministic_and_recorded(tmp_path):
    first = snapshot(*make_synthetic_scenes(tmp_path / "a", **CONTEXT_PARAMS))
    second = snapshot(*make_synthetic_scenes(tmp_path / "b", **CONTEXT_PARAMS))
    other = snapshot(*make_synthetic_scenes(tmp_path / "c", **{**CONTEXT_PARAMS, "seed": 1}))
    assert first == second and first[0] != other[0]
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["contexts"] is True and meta["ooc_fraction"] == 0.3
    # other settings in the same folder regenerate it
    make_synthetic_scenes(tmp_path / "a", **{**CONTEXT_PARAMS, "ooc_fraction": 0.0})
    anns = json.loads((tmp_path / "a" / "annotations.json").read_text())["annotations"]
    assert sum(a["out_of_context"] for a in anns) == 0


def test_read_coco_sees_the_out_of_context_flags(tmp_path):
    from hcl_lightning.analysis import read_coco

    image_dir, ann_file = make_synthetic_scenes(tmp_path, **CONTEXT_PARAMS)
    coco = json.loads(ann_file.read_text())
    images = read_coco(image_dir, ann_file)
    assert len(images) == CONTEXT_PARAMS["n_images"]
    for image, (image_id, anns) in zip(images, _by_image(coco).items(), strict=True):
        assert image.image_id == image_id
        assert image.out_of_context.tolist() == [a["out_of_context"] for a in anns]
        assert image.category_ids.tolist() == [a["category_id"] for a in anns]
    assert sum(int(image.out_of_context.sum()) for image in images) == 12
    assert len(CocoBoxSource(image_dir, ann_file)) == CONTEXT_PARAMS["n_images"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ooc_fraction": 0.2}, "ooc_fraction=0.2 needs contexts=True"),
        ({"contexts": True, "ooc_fraction": 1.5}, r"ooc_fraction must be a number in \[0, 1\]"),
        ({"contexts": True, "ooc_fraction": float("nan")}, "ooc_fraction must be a number"),
        ({"contexts": True, "ooc_fraction": "0.2"}, "ooc_fraction must be a number"),
        ({"contexts": "yes"}, "contexts must be True or False"),
        ({"random_colours": 1}, "random_colours must be True or False"),
        ({"appearance": "photo"}, r"appearance must be one of \('class', 'instance'\)"),
        (
            {"contexts": True, "ooc_fraction": 0.1, "max_objects": 1},
            "needs max_objects >= 2",
        ),
    ],
)
def test_bad_context_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_synthetic_scenes(tmp_path, n_images=4, image_size=32, **kwargs)
    assert not (tmp_path / "meta.json").exists()


def test_config_keys_reach_the_generator_and_the_folder_name(tmp_path, monkeypatch):
    from hcl_lightning.data.synthetic import prepare_synthetic_data
    from tests.helpers import compose_config

    monkeypatch.setenv("HCL_CACHE_DIR", str(tmp_path))
    default = compose_config([])
    assert default.data.synthetic.contexts is False and default.data.synthetic.ooc_fraction == 0
    overrides = ["data.synthetic.n_images=8", "data.synthetic.image_size=32"]
    cfg = compose_config([*overrides, "data.synthetic.contexts=true"])
    ooc = compose_config(
        [*overrides, "data.synthetic.contexts=true", "data.synthetic.ooc_fraction=0.5"]
    )
    coloured = compose_config([*overrides, "data.synthetic.random_colours=true"])
    class_look = compose_config([*overrides, "data.synthetic.appearance=class"])
    roots = (cfg, ooc, default, coloured, class_look)
    assert len({c.data.synthetic.root for c in roots}) == 5
    prepare_synthetic_data(ooc)
    anns = json.loads(Path(ooc.data.ann_file).read_text())["annotations"]
    assert sum(a["out_of_context"] for a in anns) == 4
    prepare_synthetic_data(coloured)
    for ann_key in ("ann_file", "validation.ann_file"):  # the validation scenes follow
        ann_file = OmegaConf.select(coloured.data, ann_key)
        meta = json.loads((Path(ann_file).parent / "meta.json").read_text())
        assert meta["random_colours"] is True
