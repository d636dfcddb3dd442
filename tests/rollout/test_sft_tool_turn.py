"""SFT records and rollout agree on every token: a synthetic record's turns, teacher-forced through
the engine with its code run in the real sandbox, give exactly the ids the record trains on, the
tool turn included."""
import numpy as np

from codedance_jax.data.records import decode_record
from codedance_jax.data.synthetic import synthetic_records
from codedance_jax.processing.chat import render_chat
from rollout import trajectory as traj_lib
from rollout.engine import Request


def test_engine_appends_the_tool_turn_the_sft_record_trains_on(make_engine, tokenizer):
    coded = [record for record in synthetic_records(12, seed=5) if len(record["messages"]) == 4][:2]
    records = [decode_record(record, record["id"]) for record in coded]
    engine = make_engine(max_turn_tokens=300)
    requests = [Request(messages=record.messages[:1], images=record.images,
                        forced_turns=[record.messages[1]["content"], record.messages[3]["content"] + "<|im_end|>"])
                for record in records]
    for record, trajectory in zip(records, engine.generate(requests)):
        assert trajectory.finish_reason == traj_lib.FINISH_STOP, trajectory.finish_detail
        assert trajectory.tool_calls[0].stdout.strip() == record.ground_truth
        sft = render_chat(record.messages, tokenizer, record.images, image_config=engine.config.image_config)
        # The record ends with the newline after its last <|im_end|>, where the engine stops.
        assert trajectory.tokens == sft.input_ids[:-1].tolist(), record.id
        # Everything the engine marks as generated is trained on; SFT also trains the <|im_end|>
        # that the engine writes itself after a `</code>` stop.
        assert np.all(np.array(trajectory.loss_mask) <= sft.loss_mask[:-1])
