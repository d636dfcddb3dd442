"""MathVerse testmini: testmini.json (images beside it) or the HF parquet; fields sample_index,
problem_index, problem_version, question, image, answer, question_type (multi-choice /
free-form), metadata {subject, subfield, source}, query_wo, query_cot. Ids are `sample_index`.
`version` selects problem versions ("Vision Only" by default, as the paper reports; "all" for
the five). Multiple choice is decided by the letter, free-form by the shared math matcher
(math-verify), with the optional judge for what the rules call different."""
from __future__ import annotations

import os

from codedance_jax import rewards
from codedance_jax.eval.items import DataError, Dataset, Item, check_exists, collect, image_field, require
from codedance_jax.eval.registry import Benchmark, register
from codedance_jax.eval.tables import read_rows

ALL_VERSIONS = "all"


@register
class MathVerse(Benchmark):
    name = "mathverse_testmini"
    task = rewards.MATH
    data_help = "testmini.json (images beside it), a .jsonl, or the HF .parquet"
    defaults = {"version": "Vision Only"}
    breakdowns = ("problem_version", "subject", "question_type")

    def read(self, path):
        rows = read_rows(check_exists(path, self.name, self.data_help), (".json", ".jsonl", ".parquet"))
        version = self.options["version"]
        if version != ALL_VERSIONS:
            known = sorted({str(row.get("problem_version")) for _, row in rows})
            rows = [(key, row) for key, row in rows if row.get("problem_version") == version]
            if not rows:
                raise DataError(f"{path}: no rows of version {version!r}; versions: {known} or 'all'")

        def item(key, row):
            metadata = row.get("metadata") or {}
            return Item(id=str(require(row, "sample_index")),
                        question=row.get("query_cot") or row.get("query_wo") or require(row, "question"),
                        image=image_field(row, "image", f"{path}, row {key}", os.path.dirname(path)),
                        gold=str(require(row, "answer")).strip(),
                        fields={"problem_version": row.get("problem_version"), "subject": metadata.get("subject"),
                                "question_type": row.get("question_type")})

        items, skipped = collect(rows, path, item)
        return Dataset(items, skipped, path)
