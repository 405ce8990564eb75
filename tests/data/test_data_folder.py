"""dataset=folder: the user's own PNG and JPEG files, written here, read into exact grey levels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_stages import write_params

from ddpm.config import DATASET_DEFAULTS, Params, quality_families_for
from ddpm.data import load_prepared, prepare_dataset, write_prepared
from ddpm.data.folder import find_images, load_image
from ddpm.data.prepare import auto_test_size
from ddpm.errors import ConfigError, DataError, DatasetNotFoundError
from ddpm.pipeline.build import data_resolved_params


def noise(shape: tuple[int, ...], seed: int, low: int = 0, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def reference(path: Path, size: int, mode: str) -> np.ndarray:
    """The square as the folder dataset's documented geometry gives it, computed with PIL alone:
    shorter side to ``size`` (bicubic), longer side to floor(size * long / short), then the
    centred square at offset round((long' - size) / 2) (half to even, as torchvision's
    CenterCrop); [C, size, size]."""
    with Image.open(path) as image:
        image = image.convert(mode)
    w, h = image.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if new != (w, h):
        image = image.resize(new, Image.Resampling.BICUBIC)
    top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)
    levels = np.asarray(image)[top:top + size, left:left + size]
    return levels[None] if levels.ndim == 2 else levels.transpose(2, 0, 1)


def prepare(folder: Path, image_size: int = 8, test_size: int = 2, seed: int = 0):
    return prepare_dataset("folder", "unused", seed=seed, test_size=test_size, folder=folder, image_size=image_size)


# --- pixels -------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "mode"), [
    (37, 45, "RGB"), (45, 37, "L"), (23, 17, "RGB"), (17, 40, "L"), (64, 64, "RGB"), (33, 16, "L")])
def test_png_pixels_equal_pil_resize_and_the_centred_crop(tmp_path, width, height, mode):
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    path = save(tmp_path / "a.png", noise(shape, width * height))
    got = load_image(path, 16)
    assert got.dtype == np.uint8 and got.shape == (3 if mode == "RGB" else 1, 16, 16)
    np.testing.assert_array_equal(got, reference(path, 16, mode))


def test_jpeg_pixels_equal_pil_on_the_decoded_file(tmp_path):
    for mode, shape in (("RGB", (29, 41, 3)), ("L", (41, 29))):
        path = save(tmp_path / f"{mode}.jpg", noise(shape, 3), quality=90)
        np.testing.assert_array_equal(load_image(path, 12), reference(path, 12, mode))


def test_an_image_whose_shorter_side_is_the_size_is_only_cropped(tmp_path):
    array = noise((16, 23, 3), 4)
    path = save(tmp_path / "a.png", array)
    # (23 - 16) / 2 = 3.5 rounds half to even: columns 4..19, the pixels themselves.
    np.testing.assert_array_equal(load_image(path, 16), array[:, 4:20].transpose(2, 0, 1))


def test_a_constant_image_stays_constant_at_any_scale(tmp_path):
    path = save(tmp_path / "a.png", np.full((53, 38), 173, np.uint8))
    assert np.unique(load_image(path, 9)).tolist() == [173]


def test_downscaling_agrees_with_torch_antialiased_bicubic_within_one_level(tmp_path):
    """An independent implementation of the same filter (Keys a = -0.5, support scaled with
    the factor). Levels in 64..191 keep PIL's 8-bit intermediate row from clipping (the
    kernel's negative lobes add at most 1/12 of the range, 11 levels, on either side), so
    the results differ only by rounding: PIL's intermediate row (0.5 times the kernel's
    absolute sum, 7/6) and each one's final rounding, under 1.5 levels: at most 1."""
    array = noise((44, 52), 5, low=64, high=192)
    path = save(tmp_path / "a.png", array)
    # Shorter side 44 -> 11 (factor 4), longer 52 -> 13; centred columns 1..11.
    resized = torch.nn.functional.interpolate(torch.from_numpy(array).double()[None, None], size=(11, 13),
                                              mode="bicubic", antialias=True, align_corners=False)[0, 0]
    expected = resized.round().numpy()[:, 1:12]
    got = load_image(path, 11)[0].astype(np.float64)
    assert np.abs(got - expected).max() <= 1
    assert (got != expected).mean() < 0.5  # mostly identical: the same filter, not merely a close one


def test_exif_orientation_is_applied(tmp_path):
    array = noise((16, 20, 3), 6)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation 6: displayed turned 90 degrees clockwise
    path = save(tmp_path / "a.png", array, exif=exif)
    upright = np.rot90(array, k=-1)  # 20 x 16: rows 2..17 are the centred square
    np.testing.assert_array_equal(load_image(path, 16), upright[2:18].transpose(2, 0, 1))


def test_lossless_modes_are_converted_exactly(tmp_path):
    rgb = noise((10, 10, 3), 7)
    opaque = np.concatenate([rgb, np.full((10, 10, 1), 255, np.uint8)], axis=2)
    save(tmp_path / "rgba.png", opaque)
    np.testing.assert_array_equal(load_image(tmp_path / "rgba.png", 10), rgb.transpose(2, 0, 1))
    grey = noise((10, 10), 8)
    save(tmp_path / "la.png", np.stack([grey, np.full_like(grey, 255)], axis=2))
    np.testing.assert_array_equal(load_image(tmp_path / "la.png", 10), grey[None])
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette.save(tmp_path / "p.png")
    colours = np.asarray(palette.getpalette(), np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(load_image(tmp_path / "p.png", 10),
                                  colours[np.asarray(palette)].transpose(2, 0, 1))
    bits = noise((10, 10), 9) > 127
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(load_image(tmp_path / "bits.png", 10), (bits * 255).astype(np.uint8)[None])


# --- folders ------------------------------------------------------------------------------


def class_folder(root: Path) -> dict[str, list[np.ndarray]]:
    """Two classes of distinct grey and colour images of odd sizes; the expected squares by class."""
    expected: dict[str, list[np.ndarray]] = {"cats": [], "dogs": []}
    sizes = [(9, 13), (17, 8), (8, 8), (11, 10), (21, 12)]
    for i, (h, w) in enumerate(sizes):
        for label, colour in (("cats", True), ("dogs", False)):
            path = root / label / ("deep" if i == 4 else "") / f"{i}.{'png' if i % 2 else 'jpg'}"
            save(path, noise((h, w, 3) if colour else (h, w), 100 * i + len(label) + colour))
            square = reference(path, 8, "RGB")  # grey images become R = G = B in a colour folder
            expected[label].append(square)
    return expected


def test_class_subfolders_give_labels_that_follow_their_images(tmp_path):
    expected = class_folder(tmp_path)
    prepared = prepare(tmp_path, test_size=3)
    meta = prepared.meta
    assert (meta["dataset"], meta["kind"], meta["shape"], meta["num_levels"]) == ("folder", "image", [3, 8, 8], 256)
    assert (meta["num_classes"], meta["class_names"]) == (2, ["cats", "dogs"])
    assert (meta["train_size"], meta["test_size"]) == (7, 3)
    found = []
    for images, labels in ((prepared.train, prepared.train_labels), (prepared.test, prepared.test_labels)):
        for image, label in zip(images, labels, strict=True):
            matches = [(name, i) for name, squares in expected.items() for i, sq in enumerate(squares)
                       if np.array_equal(sq, image)]
            assert len(matches) == 1
            assert matches[0][0] == ("cats", "dogs")[label]
            found.append(matches[0])
    assert sorted(found) == sorted((name, i) for name in expected for i in range(5))  # each image once


def test_grey_images_in_a_colour_folder_get_three_equal_channels(tmp_path):
    grey = noise((12, 15), 10)
    save(tmp_path / "a_grey.png", grey)
    save(tmp_path / "b_colour.png", noise((12, 15, 3), 11))
    save(tmp_path / "c_grey.png", noise((12, 15), 12))
    prepared = prepare(tmp_path, test_size=1)
    assert prepared.meta["shape"] == [3, 8, 8]
    everything = np.concatenate([prepared.train, prepared.test])
    single = load_image(tmp_path / "a_grey.png", 8)
    assert single.shape == (1, 8, 8)
    matches = [x for x in everything if np.array_equal(x, np.repeat(single, 3, axis=0))]
    assert len(matches) == 1 and np.array_equal(matches[0], reference(tmp_path / "a_grey.png", 8, "RGB"))


def test_a_flat_grey_folder_has_one_channel_and_no_labels(tmp_path):
    for i in range(6):
        save(tmp_path / f"{i}.png", noise((10 + i, 9), i))
    save(tmp_path / ".hidden.png", np.zeros((2, 2), np.uint8))  # hidden: ignored although too small
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    prepared = prepare(tmp_path)
    assert prepared.meta["shape"] == [1, 8, 8]
    assert prepared.meta["num_classes"] is None and prepared.train_labels is None and prepared.test_labels is None
    assert (len(prepared.train), len(prepared.test)) == (4, 2)
    write_prepared(tmp_path / "out", prepared)
    loaded = load_prepared(tmp_path / "out")
    np.testing.assert_array_equal(loaded.train, prepared.train)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "test.npy", "train.npy"]


def test_one_subfolder_is_one_class_and_gives_no_labels(tmp_path):
    for i in range(3):
        save(tmp_path / "only" / f"{i}.PNG", noise((8, 8), i))
    found = find_images(tmp_path)
    assert found.labels is None and len(found.files) == 3
    assert prepare(tmp_path, test_size=1).meta["num_classes"] is None


def test_the_split_is_seeded_and_keeps_file_order(tmp_path):
    for i in range(20):
        save(tmp_path / f"{i:02d}.png", np.full((8, 8), i, np.uint8))  # image i holds level i

    def split(seed: int) -> tuple[list[int], list[int]]:
        prepared = prepare(tmp_path, test_size=5, seed=seed)
        return [int(x[0, 0, 0]) for x in prepared.train], [int(x[0, 0, 0]) for x in prepared.test]

    train, test = split(0)
    assert train == sorted(train) and test == sorted(test) and sorted(train + test) == list(range(20))
    assert split(0) == (train, test)
    assert split(1)[1] != test


# --- errors -------------------------------------------------------------------------------


def test_missing_folder_names_the_key_and_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetNotFoundError, match=rf"data\.folder='{missing}' does not exist"):
        prepare(missing)
    save(tmp_path / "file.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetNotFoundError, match="is a file, not a folder"):
        prepare(tmp_path / "file.png")
    with pytest.raises(ConfigError, match=r"data\.folder='' is not accepted for dataset=folder"):
        prepare_dataset("folder", "unused", seed=0, test_size=1, folder="", image_size=8)


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"holds no image files \(names ending in \.png, \.jpg, \.jpeg"):
        prepare(tmp_path)
    (tmp_path / "a.webp").write_bytes(b"x")
    with pytest.raises(DatasetNotFoundError, match="it holds 1 other files, e.g. a.webp"):
        prepare(tmp_path)


def test_bad_layouts_are_refused_naming_the_folder(tmp_path):
    save(tmp_path / "a" / "0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=rf"^{tmp_path / 'b'}: class subfolder holds no image files"):
        prepare(tmp_path)
    save(tmp_path / "b" / "0.png", np.zeros((8, 8), np.uint8))
    save(tmp_path / "loose.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match=r"holds both image files \(loose.png, ...\) and subfolders \(a, ...\)"):
        prepare(tmp_path)


@pytest.mark.parametrize(("write", "fragment"), [
    (lambda p: p.write_bytes(b"certainly not a PNG"), "not a readable PNG or JPEG image (cannot identify image file"),
    (lambda p: p.write_bytes(_png_bytes()[:200]), "not a readable PNG or JPEG image"),
    (lambda p: save(p, noise((12, 7), 0)), "too small: 7 x 12 pixels (width x height); data.image_size=8"),
    (lambda p: Image.new("CMYK", (9, 9)).save(p, format="JPEG"), "mode CMYK is not accepted"),
    (lambda p: save(p, np.full((9, 9), 40000, np.uint16)), "mode I;16 is not accepted"),
    (lambda p: save(p, np.concatenate([noise((9, 9, 3), 0), np.full((9, 9, 1), 254, np.uint8)], axis=2)),
     "has transparent pixels"),
])
def test_each_bad_file_is_named_in_one_line(tmp_path, write, fragment):
    for i in range(3):
        save(tmp_path / f"good{i}.png", noise((9, 9), i))
    bad = tmp_path / "bad.png"
    write(bad)
    with pytest.raises(DataError) as info:
        prepare(tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{bad}: ") and fragment in message


def test_several_bad_files_are_listed_one_per_line(tmp_path):
    save(tmp_path / "good.png", noise((9, 9), 0))
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"junk")
    save(tmp_path / "small.png", noise((4, 9), 1))
    with pytest.raises(DataError) as info:
        prepare(tmp_path)
    lines = str(info.value).splitlines()
    assert lines[0] == "3 of 4 image files cannot be used (fix or remove them):"
    assert [line.split(": ")[0].strip() for line in lines[1:]] == [str(tmp_path / n) for n in ("a.png", "b.jpg",
                                                                                               "small.png")]


def test_a_test_size_the_folder_cannot_honour_names_the_key(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", noise((8, 8), i))
    for test_size in (0, 3):
        with pytest.raises(ConfigError, match=rf"data\.test_size={test_size} is not accepted .* 1\.\.2 of its 3"):
            prepare(tmp_path, test_size=test_size)


@pytest.mark.parametrize(("images", "held_out"), [(2, 1), (9, 1), (15, 1), (40, 4), (60, 6), (2999, 299),
                                                  (3000, 300), (10000, 300)])
def test_auto_test_size_of_a_folder_is_a_tenth_of_it_from_1_to_300(images, held_out):
    assert auto_test_size("folder", images) == held_out
    assert auto_test_size("digits", 1797) == 300  # the other datasets as before
    assert auto_test_size("mnist", 10000) == 300 and auto_test_size("mnist", 10) == 0  # 0: all of a small split


def test_auto_test_size_holds_out_a_tenth_of_a_folder_and_says_so(tmp_path):
    for i in range(25):
        save(tmp_path / f"{i:02d}.png", noise((9, 9), i))
    prepared = prepare(tmp_path, test_size="auto")
    assert (prepared.meta["train_size"], prepared.meta["test_size"]) == (23, 2)
    assert "random split of 2 test images (data.test_size=auto" in prepared.meta["source"]
    # The same split as the number written out.
    np.testing.assert_array_equal(prepare(tmp_path, test_size=2).test, prepared.test)


def test_a_folder_of_one_image_is_refused_naming_the_folder(tmp_path):
    save(tmp_path / "only.png", noise((9, 9), 0))
    for test_size in ("auto", 1):
        with pytest.raises(ConfigError, match=r"data\.folder='.*' holds 1 image; expected at least 2"):
            prepare(tmp_path, test_size=test_size)


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(noise((32, 32, 3), 0)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- params -------------------------------------------------------------------------------


def test_params_for_a_folder_resolve_and_check_the_image_size():
    p = Params.from_dict({"dataset": "folder", "data": {"folder": "imgs", "image_size": 64}})
    assert (p.data.folder, p.data.image_size) == ("imgs", 64)
    for key, value in DATASET_DEFAULTS["folder"].items():
        section, name = key.split(".")
        # The batch is the train stage's to resolve: the default capped at the training split.
        assert getattr(getattr(p, section), name) == ("auto" if key == "train.batch_size" else value)
    assert p.data.test_size == "auto"  # the prepare stage's: a tenth of the folder
    assert quality_families_for("folder") == ("classifier", "inception")
    with pytest.raises(ConfigError, match=r"data\.image_size=48 is not accepted; expected one of 16, 32, 64, 128"):
        Params.from_dict({"dataset": "folder", "data": {"image_size": 48}})
    # With the U-Net's levels set explicitly, the U-Net itself checks the size against them.
    p = Params.from_dict({"dataset": "folder", "data": {"image_size": 48},
                          "model": {"channel_mult": [1, 2], "attn_resolutions": [24]}})
    assert p.data.image_size == 48
    with pytest.raises(ConfigError, match=r"data\.image_size=0 is not accepted; expected an integer >= 1"):
        Params.from_dict({"data": {"image_size": 0}})


def test_the_batch_is_the_default_capped_at_the_training_split_and_an_explicit_one_stays():
    auto = Params.from_dict({"dataset": "folder"})
    default = DATASET_DEFAULTS["folder"]["train.batch_size"]  # 64
    assert auto.train.batch_size == "auto"
    assert data_resolved_params(auto, torch.zeros(36, 3, 16, 16)).train.batch_size == 36
    assert data_resolved_params(auto, torch.zeros(500, 3, 16, 16)).train.batch_size == default
    recipe = Params.from_dict({"recipe": "lucidrains_folder"})  # a recipe's batch is auto's value too
    assert data_resolved_params(recipe, torch.zeros(20, 3, 16, 16)).train.batch_size == 20
    assert data_resolved_params(recipe, torch.zeros(500, 3, 16, 16)).train.batch_size == 32
    explicit = Params.from_dict({"dataset": "folder", "train": {"batch_size": 64}})
    assert data_resolved_params(explicit, torch.zeros(36, 3, 16, 16)) == explicit  # the train stage refuses it


# --- stages -------------------------------------------------------------------------------


TINY = {"dataset": "folder", "timesteps": 20, "data.test_size": 2, "data.image_size": 8,
        "model.base_channels": 8, "model.channel_mult": [1, 2], "model.num_res_blocks": 1,
        "model.attn_resolutions": [], "model.dropout": 0.0, "train.steps": 4, "train.batch_size": 4,
        "train.warmup_steps": 0, "train.ema_decay": 0.5, "train.bound_every": 0, "train.log_every": 1,
        "train.device": "cpu", "evaluate.batch_size": 64, "quality.metrics": ["classifier"]}


def test_prepare_stage_reads_the_folder_and_train_and_evaluate_run_unchanged(tmp_path, monkeypatch):
    from stages import evaluate, prepare, train

    class_folder(tmp_path / "images")
    params = write_params(tmp_path / "params.yaml", **TINY, **{"data.folder": str(tmp_path / "images")})
    prep = tmp_path / "prep"
    assert prepare.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(prep)]) == 0
    meta = json.loads((prep / "meta.json").read_text())
    assert (meta["shape"], meta["num_classes"], meta["train_size"], meta["test_size"]) == ([3, 8, 8], 2, 8, 2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert train.main(["--params", str(params), "--data", str(prep), "--out", str(tmp_path / "models"),
                       "--state", str(tmp_path / "state.pt"), "--reports", str(tmp_path / "rep")]) == 0
    bound = tmp_path / "bound.json"
    assert evaluate.main(["--params", str(params), "--model", str(tmp_path / "models" / "model.pt"),
                          "--data", str(prep), "--metrics", str(bound), "--terms", str(tmp_path / "t.csv")]) == 0
    report = json.loads(bound.read_text())
    assert (report["metric"], report["unit"], report["num_images"]) == ("bpd", "bits/dim", 2)
    assert np.isfinite(report["bpd"]["total"]) and report["bpd"]["total"] > 0


def test_prepare_stage_names_a_corrupt_file_in_one_line(tmp_path, capsys):
    from stages import prepare

    for i in range(3):
        save(tmp_path / "images" / f"{i}.png", noise((9, 9), i))
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff junk")
    params = write_params(tmp_path / "params.yaml", **TINY, **{"data.folder": str(tmp_path / "images")})
    out = tmp_path / "prep"
    assert prepare.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[0]
    assert error.startswith(f"prepare: error: {tmp_path / 'images' / 'broken.jpg'}: not a readable PNG or JPEG")
    assert not out.exists()


def test_a_folder_of_a_few_dozen_images_prepares_and_trains_at_its_default_sizes(tmp_path, monkeypatch, capsys):
    """The issue's report: at the defaults, data.test_size (then 300) stopped a 40-image folder at
    prepare, and the folder's batch of 64 stopped its 36 training images at train. Now prepare
    holds out a tenth (4) and records it in meta.json, and the train stage caps the batch at the
    36 training images and stores that with the model. Only the network and the step count are
    made tiny; data.test_size and train.batch_size stay as params.yaml has them."""
    from stages import prepare as prepare_stage
    from stages import train

    for i in range(40):
        save(tmp_path / "images" / f"{i:02d}.png", noise((18, 20, 3), i))
    tiny = {key: value for key, value in TINY.items() if key not in ("data.test_size", "train.batch_size")}
    params = write_params(tmp_path / "params.yaml", **{**tiny, "data.image_size": 16,
                                                        "data.folder": str(tmp_path / "images"), "train.steps": 2})
    assert yaml.safe_load(params.read_text())["data"]["test_size"] == "auto"
    assert yaml.safe_load(params.read_text())["train"]["batch_size"] == "auto"
    prep = tmp_path / "prep"
    assert prepare_stage.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(prep)]) == 0
    meta = json.loads((prep / "meta.json").read_text())
    assert (meta["train_size"], meta["test_size"]) == (36, 4)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    models = tmp_path / "models"
    assert train.main(["--params", str(params), "--data", str(prep), "--out", str(models),
                       "--state", str(tmp_path / "state.pt"), "--reports", str(tmp_path / "rep")]) == 0
    stored = torch.load(models / "model.pt", weights_only=True)["params"]
    assert stored["train"]["batch_size"] == 36 == min(DATASET_DEFAULTS["folder"]["train.batch_size"], 36)
    assert json.loads((models / "run.json").read_text())["params"]["train"]["batch_size"] == 36
    # An explicit batch larger than the training split is still refused, naming the key.
    too_big = write_params(tmp_path / "big.yaml", **{**tiny, "data.image_size": 16, "train.batch_size": 64,
                                                     "data.folder": str(tmp_path / "images"), "train.steps": 2})
    assert train.main(["--params", str(too_big), "--data", str(prep), "--out", str(tmp_path / "m2"),
                       "--state", str(tmp_path / "s2.pt"), "--reports", str(tmp_path / "r2")]) == 2
    assert "train.batch_size=64 is larger than the training set (36 examples)" in capsys.readouterr().err
