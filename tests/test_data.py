"""Readers (tables, images), batch sampling, splits and label checks, including malformed inputs."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tuneforge.config import DataConfig, load_config
from tuneforge.data.examples import Examples, sample, split
from tuneforge.data.images import ImageCache, decode_image, list_image_folder
from tuneforge.data.sampling import EpochBatchSampler
from tuneforge.data.sources import read_images, read_split, read_text_table
from tuneforge.data.tables import read_table
from tuneforge.errors import DataError
from tuneforge.tasks.classification import Classification


def quiet(*_a, **_k):
    pass


def data_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, f"error must be a single line: {msg!r}"
    return msg


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ tables: well-formed


def test_csv_with_quoted_delimiter(tmp_path):
    f = write(tmp_path / "train.csv", 'text,label\n"hello, world",1\nplain,0\n"say ""hi""",1\n')
    df = read_table(f)
    assert df["text"].tolist() == ["hello, world", "plain", 'say "hi"']
    assert df["label"].tolist() == ["1", "0", "1"]  # every column read as text
    assert df["_line"].tolist() == [2, 3, 4]
    ex = read_text_table(f, DataConfig(), quiet)
    assert ex.inputs == ["hello, world", "plain", 'say "hi"']
    assert ex.labels == ["1", "0", "1"]
    assert ex.where[0] == f"{f} line 2"


def test_csv_keeps_na_like_strings(tmp_path):
    f = write(tmp_path / "train.csv", "text,label\nNA,1\nnull,0\nnan,1\n")
    assert read_text_table(f, DataConfig(), quiet).inputs == ["NA", "null", "nan"]


def test_tsv_quoting_is_off(tmp_path):
    # GLUE style: a bare " must not open a quoted field that swallows the following rows
    f = write(tmp_path / "train.tsv", 'sentence\tlabel\nhe said "hi\t1\nok " there\t0\n"quoted"\t1\n')
    ex = read_text_table(f, DataConfig(), quiet)
    assert ex.inputs == ['he said "hi', 'ok " there', '"quoted"']
    assert ex.labels == ["1", "0", "1"]


def test_jsonl(tmp_path):
    f = tmp_path / "train.jsonl"
    rows = [{"text": "first", "label": 1}, {"text": "second", "label": 0}]
    f.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    df = read_table(f)
    assert df["text"].tolist() == ["first", "second"]
    assert df["_line"].tolist() == [1, 3]  # real line numbers, blank line skipped
    ex = read_text_table(f, DataConfig(), quiet)
    assert ex.inputs == ["first", "second"] and ex.labels == [1, 0]
    assert ex.where[1].endswith("line 3")


def test_parquet(tmp_path):
    f = tmp_path / "train.parquet"
    pd.DataFrame({"review": ["good one", "bad one", "fine"], "label": [1, 0, 1]}).to_parquet(f)
    ex = read_text_table(f, DataConfig(), quiet)  # text column guessed: review
    assert ex.inputs == ["good one", "bad one", "fine"]
    assert [int(v) for v in ex.labels] == [1, 0, 1]


def test_text_pairs_and_guessed_columns(tmp_path):
    f = write(tmp_path / "train.tsv", "sentence1\tsentence2\tlabel\na b\tc d\t1\ne f\tg h\t0\n")
    ex = read_text_table(f, DataConfig(), quiet)
    assert ex.inputs == [("a b", "c d"), ("e f", "g h")]


def test_explicit_text_and_label_columns(tmp_path):
    f = write(tmp_path / "train.csv", "body,y\nhello,pos\nbye,neg\n")
    ex = read_text_table(f, DataConfig(text_column="body", label_column="y"), quiet)
    assert ex.inputs == ["hello", "bye"] and ex.labels == ["pos", "neg"]


def test_split_file_discovery(text_data_dir):
    cfg = DataConfig(dir=str(text_data_dir))
    train = read_split(cfg, "text", "train", quiet)
    val = read_split(cfg, "text", "val", quiet)
    assert len(train) == 120 and len(val) == 40


# ------------------------------------------------------------------ tables: malformed


def test_missing_label_column(tmp_path):
    f = write(tmp_path / "train.csv", "text,target\nhello,1\n")
    msg = data_error(read_text_table, f, DataConfig(), quiet)
    assert str(f) in msg and "'label'" in msg and "data.label_column" in msg
    assert "target" in msg  # lists the columns that exist


def test_missing_text_column_cannot_be_guessed(tmp_path):
    f = write(tmp_path / "train.csv", "body,label\nhello,1\n")
    msg = data_error(read_text_table, f, DataConfig(), quiet)
    assert "data.text_column" in msg and "body" in msg


def test_ragged_row_with_extra_field(tmp_path):
    f = write(tmp_path / "train.csv", "text,label\nhello,1\nworld,0,extra\n")
    msg = data_error(read_table, f)
    assert str(f) in msg and "line 3" in msg


def test_ragged_tsv_row(tmp_path):
    f = write(tmp_path / "train.tsv", "sentence\tlabel\nhi\t1\nthere\t0\textra\n")
    assert "line 3" in data_error(read_table, f)


def test_ragged_row_with_missing_field(tmp_path):
    f = write(tmp_path / "train.csv", "text,label,extra\nhello,1,x\nworld,0\n")
    msg = data_error(read_table, f)
    assert "line 3" in msg


def test_short_row_missing_its_label_is_still_rejected(tmp_path):
    f = write(tmp_path / "train.csv", "text,label\nhello,1\nworld\nfoo,0\n")
    msg = data_error(read_text_table, f, DataConfig(), quiet)
    assert f"{f} line 3" in msg and "1 fields" in msg


def test_blank_lines_keep_line_numbers_exact(tmp_path):
    f = write(tmp_path / "train.csv", "text,label\nhello,1\n\nworld,0,x\n")
    assert "line 4" in data_error(read_table, f)


def test_duplicate_header(tmp_path):
    f = write(tmp_path / "train.csv", "text,label,text\na,1,b\n")
    msg = data_error(read_table, f)
    assert "line 1" in msg and "'text'" in msg and "twice" in msg


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_non_utf8_names_the_line(tmp_path, suffix, sep):
    f = tmp_path / f"train{suffix}"
    f.write_bytes(f"text{sep}label\nhello{sep}1\nfine{sep}1\n".encode() + f"caf\xe9 ok{sep}0\n".encode("latin-1"))
    msg = data_error(read_table, f)
    assert str(f) in msg and "line 4" in msg and "UTF-8" in msg


def test_invalid_jsonl_names_the_line(tmp_path):
    f = write(tmp_path / "train.jsonl", '{"text": "a", "label": 1}\n{"text": oops}\n')
    msg = data_error(read_table, f)
    assert "line 2" in msg and "JSON" in msg
    f = write(tmp_path / "list.jsonl", "[1, 2]\n")
    assert "JSON object" in data_error(read_table, f)


def test_empty_text_names_file_and_line(tmp_path):
    f = write(tmp_path / "train.csv", 'text,label\nhello,1\n"",0\n   ,1\nbye,0\n')
    msg = data_error(read_text_table, f, DataConfig(), quiet)
    assert f"{f} line 3" in msg and "empty text" in msg and "on_bad_sample" in msg


def test_empty_text_skipped_and_counted(tmp_path):
    f = write(tmp_path / "train.csv", 'text,label\nhello,1\n"",0\n   ,1\nbye,0\n')
    logged = []
    ex = read_text_table(f, DataConfig(on_bad_sample="skip"), logged.append)
    assert ex.inputs == ["hello", "bye"] and ex.labels == ["1", "0"]
    assert len(ex.skipped) == 2
    assert "line 3" in ex.skipped[0] and "line 4" in ex.skipped[1]
    assert any("skipped 2" in m for m in logged)


def test_all_rows_empty_is_an_error_even_when_skipping(tmp_path):
    f = write(tmp_path / "train.csv", 'text,label\n"",0\n')
    assert "no usable rows" in data_error(read_text_table, f, DataConfig(on_bad_sample="skip"), quiet)


def test_empty_file(tmp_path):
    f = write(tmp_path / "train.csv", "")
    msg = data_error(read_table, f)
    assert str(f) in msg and "empty" in msg


def test_header_only_file(tmp_path):
    f = write(tmp_path / "train.tsv", "sentence\tlabel\n")
    assert "no data rows" in data_error(read_table, f)


def test_missing_file_and_unsupported_type(tmp_path):
    assert "does not exist" in data_error(read_table, tmp_path / "nope.csv")
    f = write(tmp_path / "train.xlsx", "x")
    assert "unsupported" in data_error(read_table, f)


def test_data_dir_without_train_file(tmp_path):
    msg = data_error(read_split, DataConfig(dir=str(tmp_path)), "text", "train", quiet)
    assert "no train file" in msg and "data.train" in msg


# ------------------------------------------------------------------ images


def save(arr, path):
    Image.fromarray(arr).save(path)
    return str(path)


def test_decode_modes_to_rgb_uint8(tmp_path):
    rng = np.random.default_rng(0)
    files = {
        "gray": save(rng.integers(0, 256, (20, 30), dtype=np.uint8), tmp_path / "gray.png"),
        "rgb": save(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), tmp_path / "rgb.png"),
        "rgba": save(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), tmp_path / "rgba.png"),
        "gray16": save(rng.integers(0, 65536, (20, 30), dtype=np.uint16), tmp_path / "gray16.png"),
    }
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    files["cmyk"] = str(tmp_path / "cmyk.jpg")
    Image.new("P", (30, 20), 3).save(tmp_path / "palette.gif")
    files["palette"] = str(tmp_path / "palette.gif")
    assert Image.open(files["gray16"]).mode.startswith("I")
    for name, f in files.items():
        arr = decode_image(f, None)
        assert arr.shape == (20, 30, 3), name
        assert arr.dtype == np.uint8, name
        assert arr.flags.writeable, name


def test_decoded_pixel_values(tmp_path):
    # 16-bit grey is scaled to 8 bits, not clipped
    ramp = np.tile(np.array([0, 32768, 65535], dtype=np.uint16), (4, 1))
    arr = decode_image(save(ramp, tmp_path / "ramp16.png"), None)
    assert arr[0, :, 0].tolist() == [0, 127, 255] or arr[0, :, 0].tolist() == [0, 128, 255]
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    # transparent RGBA pixels become white, opaque ones keep their colour
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 0
    rgba[2:, :, 3] = 255
    arr = decode_image(save(rgba, tmp_path / "rgba.png"), None)
    assert arr[0, 0].tolist() == [255, 255, 255] and arr[3, 3].tolist() == [255, 0, 0]
    # CMYK: pure magenta+yellow is red
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.tif")
    assert decode_image(str(tmp_path / "red.tif"), None)[4, 4].tolist() == [255, 0, 0]


def test_decode_downscales_short_side_never_upscales(tmp_path):
    f = save(np.zeros((40, 80, 3), dtype=np.uint8), tmp_path / "wide.png")
    assert decode_image(f, 20).shape == (20, 40, 3)
    assert decode_image(f, 100).shape == (40, 80, 3)


def test_corrupt_and_truncated_jpeg(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(good, quality=95)
    raw = good.read_bytes()
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    (tmp_path / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    for name in ("garbage.jpg", "truncated.jpg"):
        path = str(tmp_path / name)
        msg = data_error(decode_image, path, None)
        assert path in msg and "not a readable image" in msg and "on_bad_sample" in msg


def make_image_folder(root, corrupt: bool):
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            save(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), root / cls / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    if corrupt:
        (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 garbage")
    return root


def test_image_folder_listing(tmp_path):
    root = make_image_folder(tmp_path / "imgs", corrupt=False)
    ex = list_image_folder(root)
    assert Counter(ex.labels) == {"cat": 3, "dog": 3}
    assert all(p.endswith(".png") for p in ex.inputs)
    assert "no class sub-folders" in data_error(list_image_folder, root / "cat")


def test_image_folder_with_corrupt_jpeg(tmp_path):
    root = make_image_folder(tmp_path / "imgs", corrupt=True)
    ex = list_image_folder(root)
    assert len(ex) == 7
    msg = data_error(ImageCache(16, 64).prepare, ex, "error", quiet)
    assert str(root / "dog" / "broken.jpg") in msg
    logged = []
    kept = ImageCache(16, 64).prepare(ex, "skip", logged.append)
    assert len(kept) == 6 and len(kept.skipped) == 1 and "broken.jpg" in kept.skipped[0]
    assert any("skipped 1" in m for m in logged)


def test_image_cache_without_labels(tmp_path):
    # predict time: Examples.labels is None
    root = make_image_folder(tmp_path / "imgs", corrupt=False)
    ex = list_image_folder(root)
    unlabelled = Examples(ex.inputs, None, ex.where)
    out = ImageCache(16, 64).prepare(unlabelled, "error", quiet)
    assert out.labels is None and out.inputs == ex.inputs


def test_image_cache_respects_memory_bound(tmp_path):
    root = make_image_folder(tmp_path / "imgs", corrupt=False)
    ex = list_image_folder(root)
    none_kept = ImageCache(16, 0)
    none_kept.prepare(ex, "error", quiet)
    assert none_kept.store == {}
    assert none_kept.get(ex.inputs[0]).shape == (12, 12, 3)  # decoded on demand
    all_kept = ImageCache(16, 64)
    all_kept.prepare(ex, "error", quiet)
    assert len(all_kept.store) == 6


def test_image_csv(tmp_path):
    root = make_image_folder(tmp_path / "imgs", corrupt=False)
    f = write(tmp_path / "train.csv", "path,label\nimgs/cat/0.png,cat\nimgs/dog/1.png,dog\n"
              f"{root / 'cat' / '2.png'},cat\n")
    ex = read_images(f, DataConfig(), quiet)
    assert ex.labels == ["cat", "dog", "cat"]
    assert ex.inputs[0] == str(tmp_path / "imgs" / "cat" / "0.png")  # relative to the CSV's folder
    assert ex.inputs[2] == str(root / "cat" / "2.png")
    assert decode_image(ex.inputs[1], None).shape == (12, 12, 3)


def test_image_csv_errors(tmp_path):
    make_image_folder(tmp_path / "imgs", corrupt=False)
    f = write(tmp_path / "train.csv", "path,label\nimgs/cat/0.png,cat\nimgs/cat/missing.png,cat\n")
    msg = data_error(read_images, f, DataConfig(), quiet)
    assert f"{f} line 3" in msg and "missing.png" in msg
    f = write(tmp_path / "val.csv", "file,label\nimgs/cat/0.png,cat\n")
    msg = data_error(read_images, f, DataConfig(), quiet)
    assert "'path'" in msg and "data.image_column" in msg


def test_image_split_discovery(image_data_dir):
    cfg = DataConfig(dir=str(image_data_dir))
    train = read_split(cfg, "image", "train", quiet)
    val = read_split(cfg, "image", "val", quiet)
    assert Counter(train.labels) == {"red": 24, "blue": 24}
    assert Counter(val.labels) == {"red": 10, "blue": 10}


# ------------------------------------------------------------------ batch sampling


@pytest.mark.parametrize("with_lengths", [False, True])
def test_epoch_batch_sampler_covers_every_index_once(with_lengths):
    n, bs = 103, 8
    lengths = [(i * 37) % 50 + 1 for i in range(n)] if with_lengths else None
    s = EpochBatchSampler(n, bs, seed=3, lengths=lengths, mega_batch=2)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(1 <= len(b) <= bs for b in batches)
        orders.append(flat)
    assert orders[0] != orders[1] and orders[1] != orders[2]
    again = EpochBatchSampler(n, bs, seed=3, lengths=lengths, mega_batch=2)
    again.set_epoch(1)
    assert [i for b in again for i in b] == orders[1]
    other_seed = EpochBatchSampler(n, bs, seed=4, lengths=lengths, mega_batch=2)
    other_seed.set_epoch(1)
    assert [i for b in other_seed for i in b] != orders[1]


def test_length_grouped_batches_are_sorted_within_mega_batch():
    n, bs = 64, 4
    lengths = [(i * 13) % 31 for i in range(n)]
    s = EpochBatchSampler(n, bs, seed=0, lengths=lengths, mega_batch=4)
    for b in s.batches():
        ls = [lengths[i] for i in b]
        assert ls == sorted(ls, reverse=True)
    # the spread inside a batch is much smaller than random batching would give
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in s.batches()])
    assert spread < 10


def test_group_by_length_false_gives_shuffled_batches():
    from tuneforge.engine.loop import make_loader
    from tuneforge.tasks.base import Built

    lengths = [(i * 13) % 31 for i in range(64)]
    built = Built(dataset=list(range(64)), collate=lambda rows: rows, lengths=lengths)
    grouped = make_loader(built, 4, True, seed=0).batch_sampler
    plain = make_loader(built, 4, True, seed=0, group_by_length=False).batch_sampler
    assert grouped.lengths is not None and plain.lengths is None
    spread = [np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in s.batches()])
              for s in (grouped, plain)]
    assert spread[0] < 10 < spread[1]


def test_sampler_skip_resumes_mid_epoch():
    s = EpochBatchSampler(50, 6, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, skip=3)
    assert list(s) == full[3:] and len(s) == len(full) - 3


def test_eval_sampler_is_fixed_order():
    s = EpochBatchSampler(10, 4, seed=0, shuffle=False)
    assert list(s) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    s = EpochBatchSampler(4, 2, seed=0, lengths=[1, 5, 3, 4], shuffle=False)
    assert list(s) == [[1, 3], [2, 0]]  # longest first


# ------------------------------------------------------------------ splits, sampling, labels


def labelled(n_a: int, n_b: int) -> Examples:
    labels = ["a"] * n_a + ["b"] * n_b
    return Examples([f"x{i}" for i in range(len(labels))], labels, [f"line {i}" for i in range(len(labels))])


def test_stratified_split_is_seeded_and_keeps_proportions():
    ex = labelled(80, 20)
    tr, va = split(ex, 0.2, seed=0, stratify=ex.labels)
    assert len(va) == 20 and len(tr) == 80
    assert Counter(va.labels) == {"a": 16, "b": 4}
    assert Counter(tr.labels) == {"a": 64, "b": 16}
    assert sorted(tr.inputs + va.inputs) == sorted(ex.inputs)
    tr2, va2 = split(ex, 0.2, seed=0, stratify=ex.labels)
    assert va2.inputs == va.inputs and tr2.inputs == tr.inputs
    _, va3 = split(ex, 0.2, seed=1, stratify=ex.labels)
    assert va3.inputs != va.inputs and Counter(va3.labels) == {"a": 16, "b": 4}


def test_split_falls_back_when_a_class_is_too_small():
    ex = labelled(10, 1)
    tr, va = split(ex, 0.3, seed=0, stratify=ex.labels)
    assert len(tr) + len(va) == 11


def test_sample_is_seeded_subset_in_file_order():
    ex = labelled(30, 30)
    a = sample(ex, 10, seed=5)
    assert len(a) == 10 and a.inputs == sample(ex, 10, seed=5).inputs
    assert a.inputs == sorted(a.inputs, key=lambda s: int(s[1:]))
    assert sample(ex, 10, seed=6).inputs != a.inputs
    assert sample(ex, 100, seed=5) is ex


def make_task(tmp_path) -> Classification:
    return Classification(load_config({"model": "m", "data": {"dir": str(tmp_path)}}), quiet)


def test_labels_are_learnt_from_train(tmp_path):
    task = make_task(tmp_path)
    train = Examples(["a", "b", "c", "d"], [10, 9, 2.0, "9"], ["l1", "l2", "l3", "l4"])
    task.fit_labels(train, Examples(["e"], ["10"], ["l5"]))
    assert task.labels == ["2", "9", "10"]  # numeric order, 2.0 read as 2
    assert task.encode_labels(train) == [2, 1, 0, 1]


def test_unknown_val_label_names_the_label(tmp_path):
    task = make_task(tmp_path)
    train = Examples(["a", "b"], ["pos", "neg"], ["train.tsv line 2", "train.tsv line 3"])
    val = Examples(["c", "d"], ["pos", "neutral"], ["dev.tsv line 2", "dev.tsv line 3"])
    msg = data_error(task.fit_labels, train, val)
    assert "'neutral'" in msg and "dev.tsv line 3" in msg and "neg, pos" in msg


def test_single_class_train_is_an_error(tmp_path):
    task = make_task(tmp_path)
    ex = Examples(["a", "b"], ["pos", "pos"], ["l1", "l2"])
    assert "single class" in data_error(task.fit_labels, ex, ex)
