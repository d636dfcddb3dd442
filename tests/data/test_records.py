import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from codedance_jax.data.records import (RecordError, decode_record, load_records, read_raw_records,
                                        write_jsonl, write_parquet)


def _png(colour, size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _record(images, question="<image>\nWhat colour?", **extra):
    return {"messages": [{"role": "user", "content": question},
                         {"role": "assistant", "content": "<answer>red</answer>"}],
            "images": images, **extra}


def test_jsonl_stores_images_as_files_beside_it_and_reads_them_back(tmp_path):
    records = [_record([_png("red")], id="a", ground_truth="red"), _record([_png("blue"), _png("green")],
               question="<image><image>\nDiffer?")]
    path = str(tmp_path / "train.jsonl")
    write_jsonl(records, path)

    raw = list(read_raw_records(path))
    assert raw[0]["images"] == [str(tmp_path / "train_images" / "000000_0.png")]
    assert [r["id"] for r in raw] == ["a", f"{path}:1"]
    loaded = list(load_records(path))
    assert [len(r.images) for r in loaded] == [1, 2]
    assert loaded[1].images[1].getpixel((0, 0)) == (0, 128, 0)
    assert loaded[0].ground_truth == "red" and loaded[1].ground_truth is None
    assert loaded[0].messages == records[0]["messages"]


def test_parquet_reads_bytes_cells_and_hf_style_dicts_with_relative_paths(tmp_path):
    write_parquet([_record([_png("red")])], str(tmp_path / "bytes.parquet"))
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "b.png").write_bytes(_png("blue"))
    images = [[{"bytes": _png("green"), "path": "ignored.png"}], [{"bytes": None, "path": "img/b.png"}]]
    table = pa.Table.from_pylist([_record(image, reward_model={"ground_truth": "B"}) for image in images])
    pq.write_table(table, str(tmp_path / "hf.parquet"))

    assert list(load_records(str(tmp_path / "bytes.parquet")))[0].images[0].getpixel((0, 0)) == (255, 0, 0)
    green, blue = load_records(str(tmp_path / "hf.parquet"))
    assert green.images[0].getpixel((0, 0)) == (0, 128, 0)
    assert blue.images[0].getpixel((0, 0)) == (0, 0, 255)
    assert blue.ground_truth == "B"


def test_images_are_decoded_only_when_their_record_is_reached(tmp_path):
    path = str(tmp_path / "train.jsonl")
    write_jsonl([_record([_png("red")]), _record([_png("blue")])], path)
    os.remove(tmp_path / "train_images" / "000001_0.png")

    assert len(list(read_raw_records(path))) == 2  # parsing never opens images
    records = load_records(path)
    assert next(records).images[0].size == (40, 30)
    with pytest.raises(RecordError, match=rf"record {path}:1, image 0: cannot read image file "
                                          rf".*000001_0.png"):
        next(records)


def test_corrupt_images_name_the_record_and_the_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(_png("red")[:30])
    with pytest.raises(RecordError, match=rf"record r7, image 0: image \({broken}\) cannot be decoded"):
        decode_record(_record([str(broken)]), "r7")
    with pytest.raises(RecordError, match=r"record r8, image 0: image \(inline bytes\) cannot be decoded"):
        decode_record(_record([b"not an image"]), "r8")


@pytest.mark.parametrize("raw, message", [
    ({"messages": [{"role": "user", "content": "hi"}], "images": []}, "no assistant turn"),
    (_record([]), "1 image placeholders but 0 images"),
    (_record([_png("red")], question=[{"type": "image", "image": "x.png"}]), "image part with its own image"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "role in"),
    ({"messages": []}, "non-empty list"),
])
def test_unusable_records_raise_record_errors_naming_the_record(raw, message):
    with pytest.raises(RecordError, match=f"record bad-1: .*{message}"):
        decode_record(raw, "bad-1")


def test_typed_image_parts_count_as_placeholders():
    raw = _record([_png("red")], question=[{"type": "image"}, {"type": "text", "text": "What colour?"}])
    record = decode_record(raw, "typed")
    assert np.asarray(record.images[0]).shape == (30, 40, 3)


def test_bad_json_line_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": []}\n{oops\n')
    with pytest.raises(RecordError, match=rf"{path}: line 2 is not valid JSON"):
        list(read_raw_records(str(path)))
