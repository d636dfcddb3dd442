import io
import json

import numpy as np
import pytest
from PIL import Image

from codedance_jax.data.pipeline import make_sft_iterator
from codedance_jax.data.records import write_parquet
from codedance_jax.data.synthetic import synthetic_records
from codedance_jax.data.tfds_builder import build_array_record_dataset, open_data_source

RECORDS = synthetic_records(24, seed=11)
IDS = {record["id"] for record in RECORDS}
LENGTH_BUCKETS = (128, 256, 512, 1024)  # a hard record with a failed first call takes ~600 tokens


@pytest.fixture
def make(tokenizer, small_images):
    """make(**overrides) -> a fresh iterator over RECORDS; closed after the test."""
    made = []

    def make_iterator(source=RECORDS, **overrides):
        options = dict(tokenizer=tokenizer, image_config=small_images, batch_size=4,
                       length_buckets=LENGTH_BUCKETS, patch_buckets=(256,), seed=5, window_batches=2,
                       num_threads=2)
        made.append(make_sft_iterator(source, **{**options, **overrides}))
        return made[-1]

    yield make_iterator
    for iterator in made:
        iterator.close()


def _tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (10, 10), "red").save(out, format="PNG")
    return out.getvalue()


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        x.record_ids == y.record_ids and all(np.array_equal(getattr(x.inputs, f), getattr(y.inputs, f))
                                             for f in ("input_ids", "loss_mask", "position_ids", "pixel_values"))
        for x, y in zip(a, b))


def test_one_epoch_yields_every_record_once_in_bucketed_fixed_shape_batches(make):
    batches = list(make(num_epochs=1))
    ids = [record_id for batch in batches for record_id in batch.record_ids]
    assert sorted(ids) == sorted(IDS)
    for batch in batches:
        rows = len(batch.record_ids)
        longest = batch.inputs.attention_mask.sum(axis=1).max()
        assert batch.inputs.input_ids.shape[0] == 4
        assert batch.inputs.input_ids.shape[1] == min(b for b in LENGTH_BUCKETS if b >= longest)
        assert batch.inputs.pixel_values.shape == (256, 1176)
        assert batch.inputs.attention_mask[rows:].sum() == 0


def test_window_groups_similar_lengths_to_save_padding(make):
    def padding(batches):
        return sum(b.inputs.input_ids.size - b.inputs.attention_mask.sum() for b in batches)

    grouped = list(make(num_epochs=1, window_batches=6))
    assert padding(grouped) < padding(list(make(num_epochs=1, window_batches=1)))


def test_patch_budget_closes_batches_early_instead_of_overflowing(make):
    # Images take 40 to 64 patch rows at this size, so at most three fit a 128-row budget.
    batches = list(make(num_epochs=1, patch_buckets=(64, 128)))
    assert sorted(record_id for batch in batches for record_id in batch.record_ids) == sorted(IDS)
    assert all(batch.inputs.num_valid_patches <= 128 for batch in batches)
    assert max(len(batch.record_ids) for batch in batches) < 4


def test_same_seed_same_batches_and_another_seed_another_order(make):
    first = _take(make(), 5)
    assert _same_batches(first, _take(make(), 5))
    assert [b.record_ids for b in first] != [b.record_ids for b in _take(make(seed=6), 5)]


def test_epochs_are_reshuffled(make):
    batches = list(make(num_epochs=2))
    order = [record_id for batch in batches for record_id in batch.record_ids]
    assert sorted(order[:24]) == sorted(order[24:]) == sorted(IDS)
    assert order[:24] != order[24:]


def test_processes_see_disjoint_shards_covering_the_data(make):
    shards = [{record_id for batch in make(num_epochs=1, process_index=p, process_count=2)
               for record_id in batch.record_ids} for p in range(2)]
    assert shards[0].isdisjoint(shards[1])
    assert shards[0] | shards[1] == IDS
    assert len(shards[0]) == len(shards[1]) == 12


# Mid-window and at window boundaries, with and without the collation thread.
@pytest.mark.parametrize("consumed, prefetch_batches", [(1, 2), (3, 0), (6, 2)])
def test_restored_iterator_continues_exactly(make, consumed, prefetch_batches):
    records = RECORDS[:20] + [{**RECORDS[20], "messages": RECORDS[20]["messages"][:1]}]  # one skip per epoch
    uninterrupted = make(records, prefetch_batches=prefetch_batches)
    expected = _take(uninterrupted, consumed + 4)

    interrupted = make(records, prefetch_batches=prefetch_batches)
    _take(interrupted, consumed)
    state = json.loads(json.dumps(interrupted.get_state()))  # survives a JSON checkpoint
    resumed = make(records, prefetch_batches=prefetch_batches)
    resumed.set_state(state)
    assert _same_batches(_take(resumed, 4), expected[consumed:])
    assert resumed.skipped == uninterrupted.skipped


def test_unusable_records_are_counted_by_reason_and_never_batched(make):
    long_answer = " ".join(["word"] * 1200)
    bad = {
        "no-assistant": {"messages": [{"role": "user", "content": "<image>hi"}],
                         "images": [RECORDS[0]["images"][0]]},
        "corrupt": {**RECORDS[1], "images": [b"not a png"]},
        "too-long": {**RECORDS[2], "messages": RECORDS[2]["messages"][:1]
                     + [{"role": "assistant", "content": long_answer}]},
        "tiny-image": {**RECORDS[3], "images": [_tiny_png()]},  # smaller than one 28 px patch block
    }
    source = RECORDS[4:12] + [{**raw, "id": record_id} for record_id, raw in bad.items()]
    iterator = make(source, num_epochs=1)
    seen = {record_id for batch in iterator for record_id in batch.record_ids}
    assert seen == {record["id"] for record in RECORDS[4:12]}
    assert iterator.skipped == {"invalid_record": 2, "render_error": 1, "too_long": 1, "too_many_patches": 0}


def test_records_with_more_patches_than_the_largest_bucket_are_skipped(make):
    iterator = make(RECORDS[:8], num_epochs=1, patch_buckets=(32,))
    assert list(iterator) == []
    assert iterator.skipped["too_many_patches"] == 8


def test_reads_a_tfds_array_record_source(make, tmp_path):
    write_parquet(RECORDS, str(tmp_path / "train.parquet"))
    build_array_record_dataset(str(tmp_path / "train.parquet"), str(tmp_path / "tfds"), name="shapes")
    from_tfds = _take(make(open_data_source(str(tmp_path / "tfds"), name="shapes")), 3)
    assert _same_batches(from_tfds, _take(make(), 3))



def test_rejects_a_process_index_outside_the_process_count(make):
    with pytest.raises(ValueError, match=r"process_index 2 is not in \[0, process_count=2\)"):
        make(process_index=2, process_count=2)
