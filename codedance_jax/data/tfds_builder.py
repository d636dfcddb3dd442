"""Turn a JSONL / parquet record file into an array_record TFDS dataset with random access.

Each example stores the record's ``id``, its ``messages`` and ``ground_truth`` as JSON strings,
and its images as a sequence of encoded bytes (path images are read in at build time), so reading
needs neither TensorFlow nor the original image files. Examples keep the file's order.
``open_data_source`` gives the examples back in the raw record form that ``records`` and the
pipeline take.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from codedance_jax.data.records import image_bytes, read_raw_records

VERSION = "1.0.0"
SPLIT = "train"


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "messages": tfds.features.Text(),
        "ground_truth": tfds.features.Text(),
        "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
    })


class RecordFileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """One-split dataset built from a record file; the dataset name is given per instance."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, records_path: str, name: str, **kwargs: Any):
        self.name = name
        self._records_path = records_path
        super().__init__(**kwargs)

    # TFDS looks for checksum and metadata files beside the builder's module; this builder has
    # none, and the lookup imports `importlib_resources`, which TFDS does not install on
    # Python >= 3.9 (tensorflow/datasets#11212).
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=_features(), disable_shuffling=True,
            description=f"CodeDance trajectory records from {self._records_path}.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download
        return {SPLIT: self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        for index, raw in enumerate(read_raw_records(self._records_path)):
            images = [image_bytes(image, f"record {raw['id']}, image {k}")
                      for k, image in enumerate(raw["images"])]
            yield index, {"id": raw["id"], "messages": json.dumps(raw.get("messages"), ensure_ascii=False),
                          "ground_truth": json.dumps(raw.get("ground_truth"), ensure_ascii=False),
                          "images": images}


def build_array_record_dataset(records_path: str, data_dir: str, name: str = "codedance_records") -> str:
    """Builds (once; an existing build is reused) the dataset ``name`` under ``data_dir`` from a
    ``.jsonl`` or ``.parquet`` record file. Returns the dataset's version directory."""
    builder = RecordFileBuilder(records_path=records_path, name=name, data_dir=data_dir,
                                file_format="array_record")
    builder.download_and_prepare()
    return str(builder.data_dir)


class RecordDataSource:
    """Random access to a built dataset's examples as raw records (messages parsed from JSON,
    images as encoded bytes). Implements grain's RandomAccessDataSource protocol."""

    def __init__(self, examples: Any):
        self._examples = examples

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> dict:
        example = self._examples[index]
        return {"id": example["id"].decode("utf-8"), "messages": json.loads(example["messages"]),
                "ground_truth": json.loads(example["ground_truth"]), "images": list(example["images"])}

    def __repr__(self) -> str:
        return f"RecordDataSource({self._examples!r})"


def open_data_source(data_dir: str, name: str = "codedance_records", split: str = SPLIT) -> RecordDataSource:
    """The examples of dataset ``name`` built under ``data_dir`` (array_record, no TensorFlow)."""
    return RecordDataSource(tfds.data_source(name, data_dir=data_dir, split=split))
