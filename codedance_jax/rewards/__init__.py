"""Rewards of CodeDance (SPEC section 4), host side: plain Python and numpy, no JAX.

    from codedance_jax import rewards
    segments = rewards.generated_segments(traj.tokens, traj.loss_mask, tokenizer.decode)
    score = rewards.score_response(segments, ground_truth, task="general", options=None)
    batch = rewards.compute_rewards([rewards.RewardItem(segments, gt, group_id, outcomes=...)], kind="bat")

Modules, one job each: `extract` (generated text, answer extraction), `format` (format checks),
`normalize` (text and number normalisation), `match` (the one answer matcher, also used by
`codedance_jax.eval`), `mathverify` (math-verify, thread safe), `score` (Score and base score),
`bat` (tool term, difficulty factor, step values), `advantages` (GRPO group advantages),
`deepeyes` (the DeepEyes reward), `batch` (a whole GRPO batch), `tasks` (data_source -> task),
`judge` (optional OpenAI-compatible judge).
"""
from codedance_jax.rewards.advantages import group_advantages, segment_advantages
from codedance_jax.rewards.bat import (OUTCOMES, STEP_WEIGHT, TOOL_ERROR, TOOL_OK, TOOL_PARSE_ERROR, TOOL_TIMEOUT,
                                       difficulty_factor, step_values, success_rate, tool_term)
from codedance_jax.rewards.batch import (KINDS, RewardBatch, RewardInputError, RewardItem, TrajectoryReward,
                                         compute_rewards)
from codedance_jax.rewards.deepeyes import deepeyes_reward
from codedance_jax.rewards.extract import GENERAL, MATH, TASKS, extract_answer, generated_segments, last_boxed
from codedance_jax.rewards.format import MAX_ANSWER_CHARS, format_errors
from codedance_jax.rewards.match import (GroundTruthError, Match, choice_index, choice_letter, ground_truths,
                                         match_answer, option_text)
from codedance_jax.rewards.normalize import DEFAULT_REL_TOL, normalize_text, numbers_match, parse_number
from codedance_jax.rewards.score import Score, base_score, score_response
from codedance_jax.rewards.tasks import DATA_SOURCE_TASKS, task_for_record
