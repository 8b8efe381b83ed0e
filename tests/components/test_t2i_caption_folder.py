import json

import numpy as np
import pytest
import torch
from PIL import Image

from components.config import ConfigError
from components.data.validation import DataValidationError
from components.t2i.caption_folder import caption_manifest, load_caption_folder, validate_caption_folder

RULES = ["every caption a non-empty UTF-8 string", "every named file present and readable",
         "no image without a caption", "no duplicate file_name"]


def png(path, size=(8, 8), mode="RGB", seed=0):
    """A tiny noise image (PIL size is (width, height))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def write_metadata(folder, lines):
    """lines: dicts (dumped as JSON) or raw bytes, one per metadata line."""
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join((ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines)
    (folder / "metadata.jsonl").write_bytes(data)


def good_folder(tmp_path, n=5):
    """n captioned 8x8 images, the second one in a subfolder."""
    folder = tmp_path / "caps"
    names = [f"sub/img{i}.png" if i == 1 else f"img{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        png(folder / name, seed=i)
    write_metadata(folder, [{"file_name": name, "text": f"caption {i}"} for i, name in enumerate(names)])
    return folder


def failed(report):
    return sorted(o.rule for o in report.failures())


def outcome(report, rule):
    return next(o for o in report.outcomes if o.rule == rule)


def assert_one_line(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg and "Traceback" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# --- good folders -----------------------------------------------------------------------------------

def test_good_folder_loads_in_line_order(tmp_path):
    folder = good_folder(tmp_path)
    # Reverse the line order: captions must follow metadata lines, not file names.
    lines = (folder / "metadata.jsonl").read_text().splitlines()[::-1]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")      # a trailing blank line is fine
    ds = load_caption_folder(folder, resolution=16, eval_fraction=0.4, seed=3)
    assert ds.images.shape == (5, 3, 16, 16) and ds.images.dtype == torch.float32
    assert ds.images.min() >= -1 and ds.images.max() <= 1 and ds.images.std() > 0.1
    assert ds.captions == [f"caption {i}" for i in (4, 3, 2, 1, 0)]
    assert ds.is_eval.dtype == torch.bool and int(ds.is_eval.sum()) == 2     # round(0.4 * 5)
    assert ds.source == str(folder)
    assert ds.meta == {"format": "caption-folder", "metadata": "metadata.jsonl", "resolution": 16}
    again = load_caption_folder(folder, resolution=16, eval_fraction=0.4, seed=3)
    assert torch.equal(again.is_eval, ds.is_eval) and torch.equal(again.images, ds.images)
    report = validate_caption_folder(folder)
    assert report.success and [o.rule for o in report.outcomes] == RULES and report.num_rows == 5


def test_pixels_center_crop_and_grey(tmp_path):
    folder = tmp_path / "caps"
    wide = np.zeros((4, 12, 3), dtype=np.uint8)
    wide[:, :4, 0] = 255          # red | green | blue bands: the centre crop keeps only green
    wide[:, 4:8, 1] = 255
    wide[:, 8:, 2] = 255
    folder.mkdir()
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(np.full((4, 4), 255, dtype=np.uint8), "L").save(folder / "grey.jpg")
    write_metadata(folder, [{"file_name": "wide.png", "text": "green"}, {"file_name": "grey.jpg", "text": "white"}])
    ds = load_caption_folder(folder, resolution=4)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 4, 4)
    assert torch.equal(ds.images[0], green)
    assert torch.allclose(ds.images[1], torch.ones(3, 4, 4), atol=2 / 255)


def test_declared_split_wins_and_others_are_seeded(tmp_path):
    folder = good_folder(tmp_path, n=6)
    lines = [json.loads(x) for x in (folder / "metadata.jsonl").read_text().splitlines()]
    lines[0]["split"], lines[1]["split"] = "eval", "train"
    write_metadata(folder, lines)
    ds = load_caption_folder(folder, resolution=8, eval_fraction=0.25, seed=0)
    assert ds.is_eval[0] and not ds.is_eval[1]
    assert int(ds.is_eval[2:].sum()) == 1                  # round(0.25 * 4) of the lines without a split


def test_manifest_rows_and_columns(tmp_path):
    folder = good_folder(tmp_path, n=2)
    png(folder / "deep" / "er" / "stray.png")
    (folder / "notes.txt").write_text("not an image")
    m = caption_manifest(folder)
    for col in ("file_name", "text", "path", "exists", "readable", "caption_ok", "has_caption", "height", "width",
                "channels", "line"):
        assert col in m.columns
    assert m["file_name"].tolist() == ["img0.png", "sub/img1.png", "deep/er/stray.png"]
    assert m["line"].tolist() == [1, 2, 0]
    assert m["has_caption"].tolist() == [True, True, False]
    assert m["text"].tolist()[:2] == ["caption 0", "caption 1"] and m["text"].iloc[2] is None
    assert m[["height", "width", "channels"]].values.tolist() == [[8, 8, 3]] * 3
    assert m["exists"].all() and m["readable"].all()


# --- structural errors: ConfigError ----------------------------------------------------------------

def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_caption_folder(tmp_path / "nope")
    assert_one_line(e, str(tmp_path / "nope"), "metadata.jsonl", "file_name", "text")


def test_missing_metadata(tmp_path):
    png(tmp_path / "caps" / "a.png")
    with pytest.raises(ConfigError) as e:
        caption_manifest(tmp_path / "caps")
    assert_one_line(e, str(tmp_path / "caps"), "no metadata.jsonl", "file_name", "text")


@pytest.mark.parametrize("bad, expect", [
    (b'{"file_name": "a.png", "text": "x"', "not valid JSON"),
    (b'{"text": "no file"}', "no 'file_name'"),
    (b'{"file_name": 7, "text": "x"}', "'file_name' 7"),
    (b'["a.png", "x"]', "a JSON list"),
    (b'{"file_name": "../a.png", "text": "x"}', "outside the folder"),
    (b'{"file_name": "a.png", "text": "x", "split": "test"}', "split 'test'"),
    (b'{"file_name": "caf\xe9.png", "text": "x"}', "not valid UTF-8"),
])
def test_bad_metadata_line_names_the_line(tmp_path, bad, expect):
    folder = good_folder(tmp_path, n=2)
    write_metadata(folder, [{"file_name": "img0.png", "text": "ok"}, b"", bad])
    with pytest.raises(ConfigError) as e:
        load_caption_folder(folder)
    assert_one_line(e, "metadata.jsonl:3", expect)


def test_bad_arguments(tmp_path):
    folder = good_folder(tmp_path, n=2)
    with pytest.raises(ConfigError, match="resolution 0"):
        load_caption_folder(folder, resolution=0)
    with pytest.raises(ConfigError, match="eval_fraction 1.0"):
        load_caption_folder(folder, eval_fraction=1.0)


# --- rule failures: the GE report and DataValidationError ------------------------------------------

@pytest.mark.parametrize("line", [
    {"file_name": "img1.png", "text": ""},
    {"file_name": "img1.png", "text": " \t\n "},
    {"file_name": "img1.png", "text": 5},
    {"file_name": "img1.png", "text": None},
    {"file_name": "img1.png"},
    {"file_name": "img1.png", "text": "\udce9 lone surrogate"},
    b'{"file_name": "img1.png", "text": "caf\xe9"}',                 # latin-1 byte: not UTF-8
], ids=["empty", "whitespace", "int", "null", "missing", "surrogate", "latin1"])
def test_bad_caption(tmp_path, line):
    folder = tmp_path / "caps"
    png(folder / "img0.png")
    png(folder / "img1.png", seed=1)
    write_metadata(folder, [{"file_name": "img0.png", "text": "fine"}, line])
    report = validate_caption_folder(folder)
    assert failed(report) == ["every caption a non-empty UTF-8 string"]
    o = outcome(report, "every caption a non-empty UTF-8 string")
    assert o.unexpected_count == 1 and o.offending == ["img1.png (metadata.jsonl:2)"]
    with pytest.raises(DataValidationError) as e:
        load_caption_folder(folder)
    assert_one_line(e, str(folder), "every caption a non-empty UTF-8 string", "img1.png (metadata.jsonl:2)")


def test_missing_and_unreadable_files(tmp_path):
    folder = good_folder(tmp_path, n=2)
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "adir.png").mkdir()
    write_metadata(folder, [{"file_name": "img0.png", "text": "a"}, {"file_name": "sub/img1.png", "text": "b"},
                            {"file_name": "gone.png", "text": "c"}, {"file_name": "broken.png", "text": "d"},
                            {"file_name": "adir.png", "text": "e"}])
    report = validate_caption_folder(folder)
    assert failed(report) == ["every named file present and readable"]
    o = outcome(report, "every named file present and readable")
    assert o.unexpected_count == 3
    assert o.offending[0] == "gone.png (metadata.jsonl:3, no such file)"
    assert o.offending[1].startswith("broken.png (metadata.jsonl:4, ") and "cannot identify" in o.offending[1]
    assert o.offending[2] == "adir.png (metadata.jsonl:5, a folder, not a file)"
    m = caption_manifest(folder)
    assert m["exists"].tolist() == [True, True, False, True, False]
    assert m["readable"].tolist() == [True, True, False, False, False]
    with pytest.raises(DataValidationError) as e:
        load_caption_folder(folder)
    assert_one_line(e, "gone.png (metadata.jsonl:3", "broken.png (metadata.jsonl:4")


def test_image_without_caption(tmp_path):
    folder = good_folder(tmp_path, n=2)
    png(folder / "sub" / "stray.jpg")
    png(folder / ".hidden" / "ignored.png")                # hidden folders are not part of the data
    report = validate_caption_folder(folder)
    assert failed(report) == ["no image without a caption"]
    assert outcome(report, "no image without a caption").offending == ["sub/stray.jpg"]
    with pytest.raises(DataValidationError) as e:
        load_caption_folder(folder)
    assert_one_line(e, "no image without a caption: 1 row (sub/stray.jpg)")


def test_duplicate_file_name(tmp_path):
    folder = good_folder(tmp_path, n=2)
    write_metadata(folder, [{"file_name": "img0.png", "text": "a"}, {"file_name": "sub/img1.png", "text": "b"},
                            {"file_name": "./img0.png", "text": "again"}])
    report = validate_caption_folder(folder)
    assert failed(report) == ["no duplicate file_name"]
    assert outcome(report, "no duplicate file_name").offending == ["img0.png (metadata.jsonl:1)",
                                                                   "img0.png (metadata.jsonl:3)"]
    with pytest.raises(DataValidationError) as e:
        load_caption_folder(folder)
    assert_one_line(e, "no duplicate file_name", "metadata.jsonl:3")


def test_empty_folder(tmp_path):
    write_metadata(tmp_path / "caps", [])
    report = validate_caption_folder(tmp_path / "caps")
    assert not report.success and [o.rule for o in report.outcomes] == ["at least one image"]
    with pytest.raises(DataValidationError) as e:
        load_caption_folder(tmp_path / "caps")
    assert_one_line(e, str(tmp_path / "caps"), "at least one image")


def test_every_failure_at_once_and_max_offending(tmp_path):
    folder = good_folder(tmp_path, n=2)
    for i in range(4):
        png(folder / f"stray{i}.png", seed=10 + i)
    write_metadata(folder, [{"file_name": "img0.png", "text": ""}, {"file_name": "gone.png", "text": "b"},
                            {"file_name": "img0.png", "text": "c"}])
    report = validate_caption_folder(folder, max_offending=2)
    assert failed(report) == sorted(RULES)
    strays = outcome(report, "no image without a caption")
    assert strays.unexpected_count == 5 and strays.offending == ["stray0.png", "stray1.png"]   # + sub/img1.png
    with pytest.raises(DataValidationError) as e:
        load_caption_folder(folder)
    assert_one_line(e, "4 of 4 expectations", "img0.png (metadata.jsonl:1)", "gone.png (metadata.jsonl:2")
