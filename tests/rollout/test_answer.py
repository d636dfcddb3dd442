"""The answer binary runs a converted checkpoint end to end and prints the trajectory."""
from absl import flags

from rollout import answer
from rollout_helpers import smooth_image


def test_answer_prints_the_whole_trajectory_and_saves_its_images(hf_pair, tmp_path, capsys):
    _, _, ckpt_dir = hf_pair(tie=True)
    image_path = tmp_path / "photo.png"
    smooth_image(112, 140).save(image_path)
    flags.FLAGS(["answer", f"--ckpt_dir={ckpt_dir}", f"--image={image_path}", "--question=What is shown?",
                 "--max_context=512", "--prefill_chunk=64", "--decode_steps=8", "--max_turn_tokens=8",
                 f"--save_images_dir={tmp_path / 'images'}"])
    try:
        answer.main([])
    finally:
        flags.FLAGS.unparse_flags()
    printed = capsys.readouterr().out
    assert "<|im_start|>user\n<|vision_start|><|image_pad|>x20<|vision_end|>\nWhat is shown?" in printed
    assert "finish reason: turn_token_limit" in printed and "8 generated; 1 turns" in printed
    assert (tmp_path / "images" / "image_0.png").exists()
