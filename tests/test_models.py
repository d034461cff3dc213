"""Blocks and BERT against naive references; parameter annotations and counts; settings."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models import build_model, model_settings
from fmjax.models.attention import (
    ForwardContext,
    MultiHeadAttention,
    causal_mask,
    dot_product_attention,
    padding_mask,
    segment_mask,
)
from fmjax.parallel.sharding import constrain


def naive_attention(q, k, v, mask):
    """softmax(Q Kᵀ / √d_k + mask) V, one batch row and head at a time, in float64 NumPy."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    batch, length_q, heads, dim = q.shape
    out = np.zeros_like(q)
    for b in range(batch):
        for h in range(heads):
            scores = q[b, :, h] @ k[b, :, h].T / np.sqrt(dim)
            scores = np.where(mask[b, 0], scores, -1e30)
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            out[b, :, h] = weights @ v[b, :, h]
    return out


def random_qkv(seed=0, batch=2, length=7, heads=3, dim=8):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (batch, length, heads, dim)) for key in keys]


def test_dot_product_attention_matches_naive_with_padding():
    q, k, v = random_qkv()
    attention_mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
    mask = np.broadcast_to(padding_mask(attention_mask), (2, 1, 7, 7))
    out = dot_product_attention(q, k, v, padding_mask(attention_mask))
    np.testing.assert_allclose(out, naive_attention(q, k, v, mask), atol=1e-5)


def test_fully_masked_rows_are_finite():
    q, k, v = random_qkv()
    out = dot_product_attention(q, k, v, jnp.zeros((2, 1, 7, 7), bool))
    assert np.isfinite(np.asarray(out)).all()


def test_causal_and_segment_masks_match_loops():
    length = 6
    causal = np.asarray(causal_mask(length))[0, 0]
    for i in range(length):
        for j in range(length):
            assert causal[i, j] == (j <= i)
    segments = jnp.array([[1, 1, 2, 2, 2, 0]])
    same = np.asarray(segment_mask(segments, segments))[0, 0]
    for i in range(length):
        for j in range(length):
            assert same[i, j] == (segments[0, i] == segments[0, j])
    q, k, v = random_qkv(length=length, batch=1)
    mask = np.asarray(causal_mask(length) & segment_mask(segments, segments))
    np.testing.assert_allclose(
        dot_product_attention(q, k, v, jnp.asarray(mask)),
        naive_attention(q, k, v, mask),
        atol=1e-5,
    )


def test_multi_head_attention_module_matches_naive_projections():
    with nnx.use_eager_sharding(False):
        layer = MultiHeadAttention(
            16, 4, 8, dropout_rate=0.0, dtype=jnp.float32, backend="xla", rngs=nnx.Rngs(0)
        )
    x = jax.random.normal(jax.random.key(1), (2, 5, 16))
    attention_mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    out = layer(x, ForwardContext(padding_mask(attention_mask), deterministic=True))

    def project(dense, inputs):
        return np.einsum("bld,dhk->blhk", inputs, dense.kernel[...]) + dense.bias[...]

    q, k, v = (project(p, np.asarray(x)) for p in (layer.query, layer.key, layer.value))
    mask = np.broadcast_to(padding_mask(attention_mask), (2, 1, 5, 5))
    attended = naive_attention(q, k, v, mask)
    expected = np.einsum("blhk,hkd->bld", attended, layer.out.kernel[...]) + layer.out.bias[...]
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_bert():
    config = experiment_config("bert_tiny", "smoke")
    config.model.update(compute_dtype="float32", vocab_size=300)
    with nnx.use_eager_sharding(False):
        return build_model(config.model, nnx.Rngs(0)), config.model


def bert_inputs(vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    input_ids = rng.integers(5, vocab_size, size=(2, 16)).astype(np.int32)
    attention_mask = np.ones((2, 16), np.int32)
    attention_mask[1, 10:] = 0
    positions = np.array([[1, 3, 15], [0, 2, 9]], np.int32)
    return input_ids, np.zeros_like(input_ids), attention_mask, positions


def test_bert_logits_are_the_head_at_masked_positions(tiny_bert):
    model, config = tiny_bert
    input_ids, types, attention_mask, positions = bert_inputs(config.vocab_size)
    logits = model(input_ids, types, attention_mask, positions, deterministic=True)
    assert logits.shape == (2, 3, config.vocab_size) and logits.dtype == jnp.float32
    hidden = model.encode(input_ids, types, attention_mask, deterministic=True)
    full = model.mlm_logits(hidden)
    expected = np.take_along_axis(np.asarray(full), positions[:, :, None], axis=1)
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_bert_ignores_padded_tokens(tiny_bert):
    model, config = tiny_bert
    input_ids, types, attention_mask, positions = bert_inputs(config.vocab_size)
    changed = input_ids.copy()
    changed[1, 10:] = 7
    a = model(input_ids, types, attention_mask, positions, deterministic=True)
    b = model(changed, types, attention_mask, positions, deterministic=True)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_dropout_uses_the_given_rngs(tiny_bert):
    model, config = tiny_bert
    inputs = bert_inputs(config.vocab_size)
    det = [model(*inputs, deterministic=True) for _ in range(2)]
    np.testing.assert_array_equal(det[0], det[1])
    drop = [model(*inputs, deterministic=False, rngs=nnx.Rngs(dropout=s)) for s in (1, 2)]
    assert not np.allclose(drop[0], drop[1])
    again = model(*inputs, deterministic=False, rngs=nnx.Rngs(dropout=1))
    np.testing.assert_array_equal(drop[0], again)


def test_every_parameter_has_logical_axes(tiny_bert):
    model, _ = tiny_bert
    everything = nnx.to_flat_state(nnx.state(model))
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert [path for path, _ in everything] == [path for path, _ in params]  # no rng state
    for path, variable in everything:
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.get_value().ndim, path


def test_bert_base_has_the_reference_parameter_count():
    config = experiment_config("bert_base")
    config.model.compute_dtype = "float32"
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: build_model(config.model, nnx.Rngs(0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    # HF BertForMaskedLM(BertConfig()) at 512 positions: 109,514,298 parameters (tied decoder).
    assert count == 109_514_298


def test_constrain_is_a_no_op_without_a_mesh():
    x = jnp.ones((4, 3))
    assert constrain(x, ("activation_batch", "activation_embed")) is x


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_layrs", 2, r"unknown field model\.num_layrs for BertConfig"),
        ("num_layers", "2", r"model\.num_layers must be a int, got '2'"),
        ("scan_layers", 1, r"model\.scan_layers must be a bool"),
        ("norm_position", "middle", r"model\.norm_position must be one of \['pre', 'post'\]"),
    ],
)
def test_model_settings_name_the_wrong_field(field, value, message):
    config = experiment_config("bert_tiny", "smoke")
    settings = model_settings(config.model)
    assert (settings.num_layers, settings.scan_layers) == (2, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.num_layers = 3
    model = config.model.to_dict()  # a ConfigDict refuses other types itself; a JSON file does not
    model[field] = value
    with pytest.raises(ConfigError, match=message):
        model_settings(model)


def test_contrastive_towers_take_the_shared_fields_unless_they_set_them():
    config = experiment_config("contrastive_tiny", "smoke")
    config.model.image.dropout_rate = 0.0
    settings = model_settings(config.model)
    assert (settings.image.dropout_rate, settings.text.dropout_rate) == (0.0, 0.1)
    config.model.text.pooling = "max"
    with pytest.raises(ConfigError, match=r"model\.text\.pooling must be one of"):
        model_settings(config.model)
