"""A tool result the tokenizer cannot take ends its own trajectory with a recorded reason, never the batch."""
import concurrent.futures

from rollout import trajectory as traj_lib
from rollout.engine import Request
from rollout_helpers import smooth_image


class LoneSurrogateErrors:
    """The real pool, except that the error text of a failed call holds a lone surrogate, as a pool
    that does not sanitise its results returned for `raise ValueError('\\ud800')`."""

    def __init__(self, pool):
        self._pool = pool

    def submit(self, session_id, code, files=None):
        result = self._pool.execute(session_id, code, files)
        if result.error is not None:
            result.error = "ValueError: \ud800"
        future = concurrent.futures.Future()
        future.set_result(result)
        return future

    def close_session(self, session_id):
        self._pool.close_session(session_id)


def code_turn(code: str) -> str:
    return f"<code>\n```python\n{code}\n```\n</code>"


def test_an_unrenderable_tool_turn_ends_only_its_trajectory(make_engine, pool):
    engine = make_engine()
    engine.pool = LoneSurrogateErrors(pool)
    image = smooth_image(112, 112)
    bad, good = engine.generate([
        Request.from_question("Fail?", image, forced_turns=[code_turn("raise ValueError('x')")]),
        Request.from_question("Sum?", image, forced_turns=[code_turn("print(2 + 2)"), "<answer>4</answer><|im_end|>"]),
    ])
    assert bad.finish_reason == traj_lib.FINISH_TOOL_UNRENDERABLE
    assert bad.finish_detail.startswith("TypeError") and bad.tool_calls[0].outcome == traj_lib.TOOL_ERROR
    assert good.finish_reason == traj_lib.FINISH_STOP and good.tool_calls[0].stdout == "4\n"
