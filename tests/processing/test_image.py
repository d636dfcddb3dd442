"""Image preprocessing: SPEC smart_resize vectors and exact parity with Qwen2VLImageProcessorPil."""
import numpy as np
import pytest
from PIL import Image
from transformers import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from codedance_jax.processing.image import (ImageProcessingConfig, image_token_count, preprocess_image,
                                            preprocess_images, resize_for_model, smart_resize)

SPEC_MAX_PIXELS = 1003520


@pytest.mark.parametrize("size, expected", [
    ((480, 640), (476, 644)), ((1080, 1920), (728, 1316)), ((100, 100), (112, 112)), ((4000, 3000), (1148, 840)),
])
def test_smart_resize_spec_vectors(size, expected):
    assert smart_resize(*size, factor=28, min_pixels=3136, max_pixels=SPEC_MAX_PIXELS) == expected


def test_smart_resize_matches_transformers():
    rng = np.random.default_rng(0)
    for height, width in rng.integers(28, 5000, (200, 2)):
        if max(height, width) / min(height, width) > 200:
            continue
        for max_pixels in (SPEC_MAX_PIXELS, 12845056, 64 * 28 * 28):
            ours = smart_resize(int(height), int(width), 28, 3136, max_pixels)
            assert ours == hf_smart_resize(int(height), int(width), 28, 3136, max_pixels), (height, width)


def test_smart_resize_errors():
    with pytest.raises(ValueError, match="30x6100 .* aspect ratio 203.3 > 200"):
        smart_resize(30, 6100)
    with pytest.raises(ValueError, match="20x500 .* shorter than 28"):
        smart_resize(20, 500)


def random_image(rng, height, width, mode):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode)


@pytest.mark.parametrize("height, width, mode", [
    (480, 640, "RGB"), (100, 100, "RGB"), (57, 1000, "RGBA"), (300, 29, "L"), (1500, 1100, "RGB"), (56, 56, "RGB"),
])
def test_matches_transformers_processor(height, width, mode):
    config = ImageProcessingConfig(max_pixels=256 * 28 * 28)
    hf = Qwen2VLImageProcessorPil(min_pixels=config.min_pixels, max_pixels=config.max_pixels)
    image = random_image(np.random.default_rng(height * width), height, width, mode)
    pixel_values, grid = preprocess_image(image, config)
    expected = hf(images=[image], return_tensors="np")
    assert pixel_values.dtype == np.float32 and pixel_values.shape[1] == 1176
    np.testing.assert_array_equal(grid, expected["image_grid_thw"])
    np.testing.assert_allclose(pixel_values, expected["pixel_values"], rtol=0, atol=1e-6)


def test_batch_of_images_matches_transformers():
    rng = np.random.default_rng(1)
    images = [random_image(rng, 90, 200, "RGB"), random_image(rng, 150, 60, "RGBA")]
    hf = Qwen2VLImageProcessorPil()
    expected = hf(images=images, return_tensors="np")
    pixel_values, grids = preprocess_images(images)
    np.testing.assert_array_equal(grids, expected["image_grid_thw"])
    np.testing.assert_allclose(pixel_values, expected["pixel_values"], rtol=0, atol=1e-6)
    assert [image_token_count(g) for g in grids] == [int(g.prod()) // 4 for g in expected["image_grid_thw"]]


def test_empty_image_list():
    pixel_values, grids = preprocess_images([])
    assert pixel_values.shape == (0, 1176) and grids.shape == (0, 3)


def test_preprocess_images_names_bad_index():
    good = Image.new("RGB", (64, 64))
    with pytest.raises(ValueError, match="image 1: .*aspect ratio"):
        preprocess_images([good, Image.new("RGB", (6000, 29))])
    with pytest.raises(TypeError, match="image 0 is a ndarray"):
        preprocess_images([np.zeros((64, 64, 3), np.uint8)])


def test_resize_for_model_size():
    resized = resize_for_model(Image.new("RGBA", (640, 480)), ImageProcessingConfig(max_pixels=SPEC_MAX_PIXELS))
    assert resized.mode == "RGB" and resized.size == (644, 476)


def test_config_from_preprocessor_config():
    hub = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
           "merge_size": 2, "image_mean": list(ImageProcessingConfig().image_mean),
           "image_std": list(ImageProcessingConfig().image_std), "image_processor_type": "Qwen2VLImageProcessor"}
    assert ImageProcessingConfig.from_preprocessor_config(hub) == ImageProcessingConfig(max_pixels=12845056)
    nested = {"size": {"shortest_edge": 1024, "longest_edge": 4096}}
    config = ImageProcessingConfig.from_preprocessor_config(nested)
    assert (config.min_pixels, config.max_pixels) == (1024, 4096)


def test_written_preprocessor_config_reads_back_the_same_here_and_in_transformers(tmp_path):
    import json
    config = ImageProcessingConfig(min_pixels=3136, max_pixels=224 * 224)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config.to_preprocessor_config()))
    assert ImageProcessingConfig.for_checkpoint(str(tmp_path)) == config
    hf = Qwen2VLImageProcessorPil.from_pretrained(str(tmp_path))
    image = random_image(np.random.default_rng(3), 480, 640, "RGB")
    np.testing.assert_array_equal(preprocess_image(image, config)[1], hf(images=[image], return_tensors="np")["image_grid_thw"])
    assert ImageProcessingConfig.for_checkpoint(str(tmp_path / "nothing")) == ImageProcessingConfig()
    (tmp_path / "preprocessor_config.json").write_text('{"min_pixels": "many"}')
    with pytest.raises(ValueError, match="preprocessor_config.json: not a usable preprocessor config"):
        ImageProcessingConfig.for_checkpoint(str(tmp_path))
