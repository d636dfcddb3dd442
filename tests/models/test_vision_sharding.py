"""The vision tower under a mesh: its activations are split over the data-parallel axes (logical
constraints, no-ops without a mesh), and rematerialising its blocks changes no value or gradient."""
import jax
import jax.numpy as jnp
import numpy as np

from codedance_jax import mesh as mesh_lib
from models.qwen2_5_vl import Qwen2_5_VL, get_preset
from models.qwen2_5_vl import model as model_lib
from models.qwen2_5_vl.sharding import constrain
from models.qwen2_5_vl.vision import vision_hidden

CFG = get_preset("tiny")


def tower_inputs():
    """Two images (4x8 and 8x8 patches) laid out in the tower's windows; float32 parameters."""
    grids = np.asarray([[1, 4, 8], [1, 8, 8]])
    pixels = np.random.default_rng(0).normal(size=(96, CFG.vision.patch_dim)).astype(np.float32)
    padded, layout, _ = model_lib.vision_inputs(CFG, pixels, grids)
    return Qwen2_5_VL(CFG).params()["vision"], jnp.asarray(padded), jax.tree.map(jnp.asarray, layout)


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((8, 4))
    assert constrain(x, ("batch", None)) is x


def test_tower_rows_are_split_over_the_data_parallel_axes_under_a_mesh():
    params, pixels, layout = tower_inputs()
    tower = jax.jit(lambda p, x, lay: vision_hidden(CFG.vision, p, x, lay))
    expected = tower(params, pixels, layout)
    mesh = mesh_lib.make_mesh((2, 2, 2), jax.devices()[:8])
    with jax.set_mesh(mesh):
        out = tower(params, pixels, layout)
    assert out.sharding.spec[0] == mesh_lib.BATCH_AXES  # rows split, not replicated
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_rematerialised_blocks_give_the_same_gradients():
    params, pixels, layout = tower_inputs()

    def grads(remat):
        loss = lambda p: jnp.sum(vision_hidden(CFG.vision, p, pixels, layout, remat=remat) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss))(params)

    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads(True), grads(False))
