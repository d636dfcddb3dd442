"""The KV-cache path (prefill, one-token decode, chunk appends with images) gives the logits of
one full forward over the finished sequence."""
import jax
import numpy as np

from codedance_jax.processing.rope_index import continuation_positions, get_rope_index
from hf_reference import random_pixels, sequence
from models.qwen2_5_vl import KVCache
from models.qwen2_5_vl import model as model_lib

ATOL = 1e-4
embed_inputs = jax.jit(model_lib.embed_inputs, static_argnums=0)


def full_logits(model, ids, pixels=None, grids=None):
    return np.asarray(model(np.array([ids]), pixels, grids))[0]


def embed_chunk(cfg, params, ids, pixels=None, grids=None):
    inputs = model_lib.prepare_inputs(cfg, np.array([ids]), pixels, grids)
    return embed_inputs(cfg, params, inputs.as_jax_tree())


def test_prefill_then_decode_and_image_append_match_full_forward(hf_pair):
    _, model, _ = hf_pair(tie=False)
    cfg, params = model.config, model.params()
    rng = np.random.default_rng(0)
    grid_a, grid_b = np.array([[1, 12, 20]]), np.array([[1, 8, 8]])
    prompt = sequence(rng, [4, grid_a[0], 6])
    decoded = sequence(rng, [5])
    tool_turn = sequence(rng, [3, grid_b[0], 2])  # a tool response carrying an image
    pix_a, pix_b = random_pixels(rng, grid_a), random_pixels(rng, grid_b)
    whole = prompt + decoded + tool_turn
    reference = full_logits(model, whole, np.concatenate([pix_a, pix_b]), np.concatenate([grid_a, grid_b]))

    cache = KVCache.zeros(cfg.text, batch=1, max_len=256)
    positions, _ = get_rope_index(np.array([prompt]), grid_a)
    embeds = embed_chunk(cfg, params, prompt, pix_a, grid_a)
    pad = embeds.shape[1] - len(prompt)
    logits, cache = model_lib.extend_cache(cfg, params, embeds, np.pad(positions, ((0, 0), (0, 0), (0, pad))),
                                           np.array([len(prompt)]), cache)
    np.testing.assert_allclose(np.asarray(logits)[0, : len(prompt)], reference[: len(prompt)], atol=ATOL, rtol=0)
    start = int(positions.max()) + 1

    for i, token in enumerate(decoded):
        pos, start = continuation_positions([token], start=start)
        emb = jax.numpy.take(params["text"]["embed"], np.array([[token]]), axis=0)
        logits, cache = model_lib.extend_cache(cfg, params, emb, pos[:, None, :], np.array([1]), cache)
        np.testing.assert_allclose(np.asarray(logits)[0, 0], reference[len(prompt) + i], atol=ATOL, rtol=0)

    pos, start = continuation_positions(tool_turn, grid_b, start=start)
    embeds = embed_chunk(cfg, params, tool_turn, pix_b, grid_b)
    pad = embeds.shape[1] - len(tool_turn)
    logits, cache = model_lib.extend_cache(cfg, params, embeds, np.pad(pos, ((0, 0), (0, pad)))[:, None, :],
                                           np.array([len(tool_turn)]), cache)
    offset = len(prompt) + len(decoded)
    np.testing.assert_allclose(np.asarray(logits)[0, : len(tool_turn)], reference[offset:], atol=ATOL, rtol=0)
    assert int(cache.lengths[0]) == len(whole)


def test_slots_decode_independently(hf_pair):
    """Two slots of different lengths; one idles (num_new=0) while the other decodes, attending
    to a window of the cache."""
    _, model, _ = hf_pair(tie=True)
    cfg, params = model.config, model.params()
    rng = np.random.default_rng(1)
    seqs = [sequence(rng, [9]), sequence(rng, [4])]
    extra = [sequence(rng, [3]), sequence(rng, [3])]
    refs = [full_logits(model, s + e) for s, e in zip(seqs, extra)]

    cache = KVCache.zeros(cfg.text, batch=2, max_len=64)
    ids = np.zeros((2, 16), np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    mask = (np.arange(16)[None] < np.array([[len(s)] for s in seqs])).astype(np.int32)
    positions, _ = get_rope_index(ids, None, mask)
    emb = jax.numpy.take(params["text"]["embed"], ids, axis=0)
    logits, cache = model_lib.extend_cache(cfg, params, emb, positions, mask.sum(1), cache)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(np.asarray(logits)[i, : len(s)], refs[i][: len(s)], atol=ATOL, rtol=0)

    done = [0, 0]  # tokens of `extra` each slot has decoded
    for step in range(3):
        active = np.array([1, int(step != 1)])  # slot 1 idles at step 1; its chunk must be ignored
        tokens = np.array([[extra[i][done[i]]] for i in range(2)])
        pos = np.array([[[len(seqs[i]) + done[i]] for i in range(2)]] * 3)  # text: all three axes equal
        emb = jax.numpy.take(params["text"]["embed"], tokens, axis=0)
        # Decode reads only a window of the cache (it holds both slots' tokens).
        logits, cache = model_lib.extend_cache(cfg, params, emb, pos, active, cache, kv_window=32)
        for i in np.flatnonzero(active):
            reference = refs[i][len(seqs[i]) + done[i]]
            np.testing.assert_allclose(np.asarray(logits)[i, 0], reference, atol=ATOL, rtol=0)
            done[i] += 1
    assert cache.lengths.tolist() == [len(seqs[0]) + 3, len(seqs[1]) + 2]


def test_cache_size_is_reported(hf_pair):
    _, model, _ = hf_pair(tie=True)
    t = model.config.text
    cache = KVCache.zeros(t, batch=3, max_len=128)
    assert cache.nbytes == 2 * t.num_layers * 3 * 128 * t.num_kv_heads * t.head_dim * 4 + 3 * 4
