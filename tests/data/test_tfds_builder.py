import os

import pytest

from codedance_jax.data.records import write_jsonl, write_parquet
from codedance_jax.data.synthetic import synthetic_records
from codedance_jax.data.tfds_builder import build_array_record_dataset, open_data_source

RECORDS = synthetic_records(6, seed=3)
STORED = ("id", "messages", "ground_truth", "images")  # what SFT reads; tags like `difficulty` are not kept


@pytest.mark.parametrize("extension, writer", [(".jsonl", write_jsonl), (".parquet", write_parquet)])
def test_built_dataset_gives_back_the_records_by_index(tmp_path, extension, writer):
    records_path = str(tmp_path / f"train{extension}")
    writer(RECORDS, records_path)
    version_dir = build_array_record_dataset(records_path, str(tmp_path / "tfds"), name="shapes")

    assert version_dir == str(tmp_path / "tfds" / "shapes" / "1.0.0")
    assert any(name.startswith("shapes-train.array_record") for name in os.listdir(version_dir))
    source = open_data_source(str(tmp_path / "tfds"), name="shapes")
    assert len(source) == len(RECORDS)
    for index in (4, 0, 5, 2):  # random access, in any order
        assert source[index] == {key: RECORDS[index][key] for key in STORED}


def test_rebuilding_reuses_the_existing_dataset(tmp_path):
    records_path = str(tmp_path / "train.jsonl")
    write_jsonl(RECORDS, records_path)
    version_dir = build_array_record_dataset(records_path, str(tmp_path / "tfds"))
    write_jsonl(RECORDS[:2], records_path)
    assert build_array_record_dataset(records_path, str(tmp_path / "tfds")) == version_dir
    assert len(open_data_source(str(tmp_path / "tfds"))) == len(RECORDS)
