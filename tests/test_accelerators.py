"""Attention backends against the XLA reference, backend checks, bf16 numerics, remat policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fmjax.config import resolve_auto_fields
from fmjax.errors import ConfigError
from fmjax.experiments import experiment_config
from fmjax.models.attention import dot_product_attention
from fmjax.models.attention_backends import (
    AttentionMask,
    check_attention_backend,
    cudnn_attention,
    splash_attention,
)
from fmjax.models.dropout import dropout, keep_threshold
from fmjax.parallel.mesh import MESH_AXES


def qkv(length, batch=2, heads=2, dim=32, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (batch, length, heads, dim)) for key in keys]


def masks(length):
    """Padding (row 1 half padded), causal, and causal + packed documents with padding ids."""
    padding = jnp.array([[1] * length, [1] * (length // 2) + [0] * (length - length // 2)])
    third = length // 3
    segments = jnp.array(
        [[1] * third + [2] * (length - third), [1] * (2 * third) + [0] * (length - 2 * third)]
    )
    return {
        "padding": AttentionMask(key_padding=padding),
        "causal": AttentionMask(causal=True),
        "causal_segments": AttentionMask(segment_ids=segments, causal=True),
        "padding_segments": AttentionMask(key_padding=padding, segment_ids=segments),
    }


def assert_matches_reference(attention, mask, length, real_queries, atol):
    """attention(q, k, v, mask) == the xla reference: outputs and gradients of q, k, v."""
    q, k, v = qkv(length)
    cotangent = jax.random.normal(jax.random.key(9), q.shape) * real_queries[:, :, None, None]

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v, mask) * cotangent)

    reference = dot_product_attention(q, k, v, mask)
    out = attention(q, k, v, mask)
    np.testing.assert_allclose(
        out * real_queries[:, :, None, None],
        reference * real_queries[:, :, None, None],
        atol=atol,
    )
    grads = jax.grad(loss(attention), argnums=(0, 1, 2))(q, k, v)
    reference_grads = jax.grad(loss(dot_product_attention), argnums=(0, 1, 2))(q, k, v)
    for got, want in zip(grads, reference_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=atol)


def real_query_rows(mask, length):
    """1 where a query's output is used (real tokens); padded queries differ by design."""
    if mask.key_padding is None:
        return jnp.ones((2, length))
    return mask.key_padding.astype(jnp.float32)


@pytest.mark.parametrize("name", ["padding", "causal", "causal_segments", "padding_segments"])
def test_cudnn_arguments_match_the_reference(name):
    """The exact jax.nn.dot_product_attention call the cudnn backend makes (is_causal, key
    lengths, document mask), run through jax's own xla implementation on CPU."""
    length = 12
    mask = masks(length)[name]
    attention = lambda q, k, v, m: cudnn_attention(q, k, v, m, implementation="xla")  # noqa: E731
    assert_matches_reference(attention, mask, length, real_query_rows(mask, length), atol=1e-5)


@pytest.mark.parametrize("name", ["padding", "causal_segments"])
def test_splash_kernel_in_interpret_mode_matches_the_reference(name):
    length = 128  # one splash tile
    mask = masks(length)[name]
    attention = lambda q, k, v, m: splash_attention(q, k, v, m, interpret=True)  # noqa: E731
    assert_matches_reference(attention, mask, length, real_query_rows(mask, length), atol=2e-5)


def test_splash_kernel_runs_per_device_under_a_mesh():
    """Batch over data, heads over tensor: shard_map hands each device its own block."""
    import flax.linen as nn

    from fmjax.config import DEFAULT_LOGICAL_AXIS_RULES

    length = 128
    mask = masks(length)["causal_segments"]
    q, k, v = qkv(length)
    reference = dot_product_attention(q, k, v, mask)
    auto = (jax.sharding.AxisType.Auto,) * 3
    mesh = jax.make_mesh((2, 1, 2), MESH_AXES, axis_types=auto, devices=jax.devices()[:4])
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_LOGICAL_AXIS_RULES):
        out = jax.jit(lambda q, k, v, m: splash_attention(q, k, v, m, interpret=True))(
            q, k, v, mask
        )
    np.testing.assert_allclose(out, reference, atol=2e-5)


def model_fields(**fields):
    base = dict(
        attention_backend="auto",
        attention_dropout_rate=0.0,
        compute_dtype="bfloat16",
        head_dim=64,
        max_seq_len=128,
    )
    return {**base, **fields}


def test_auto_picks_the_fused_kernel_each_platform_allows():
    assert check_attention_backend(model_fields(), "cpu") == "xla"
    assert check_attention_backend(model_fields(), "gpu") == "cudnn"
    assert check_attention_backend(model_fields(), "tpu") == "splash"
    # What a kernel cannot do leaves auto on the reference (and the log line says why).
    assert check_attention_backend(model_fields(attention_dropout_rate=0.1), "gpu") == "xla"
    assert check_attention_backend(model_fields(compute_dtype="float32"), "gpu") == "xla"
    assert check_attention_backend(model_fields(), "tpu", seq_len=100) == "xla"
    # Contrastive towers are checked each: 8 x 8 image patches are no 128-token splash tile.
    contrastive = experiment_config("contrastive_tiny").model
    contrastive.compute_dtype = "bfloat16"
    assert check_attention_backend(contrastive, "gpu") == "cudnn"
    assert check_attention_backend(contrastive, "tpu") == "xla"


@pytest.mark.parametrize(
    "fields, platform, message",
    [
        (dict(attention_backend="cudnn"), "cpu", "cudnn runs on gpu only"),
        (dict(attention_backend="splash"), "gpu", "splash runs on tpu only"),
        (dict(attention_backend="cudnn", attention_dropout_rate=0.1), "gpu", "attention_dropout"),
        (dict(attention_backend="splash", attention_dropout_rate=0.1), "tpu", "attention_dropout"),
        (dict(attention_backend="cudnn", compute_dtype="float32"), "gpu", "bfloat16"),
        (dict(attention_backend="flash"), "gpu", "must be one of"),
    ],
)
def test_a_combination_no_kernel_can_run_is_a_config_error(fields, platform, message):
    with pytest.raises(ConfigError, match=message) as error:
        check_attention_backend(model_fields(**fields), platform)
    if "must be one of" not in message:
        assert "attention_backend='xla'" in str(error.value)  # names the alternative


def test_explicit_cudnn_on_cpu_fails_before_the_run_starts(capsys):
    config = experiment_config("bert_tiny", "smoke")
    config.model.attention_backend = "cudnn"
    with pytest.raises(ConfigError, match="cudnn runs on gpu only"):
        resolve_auto_fields(config, "cpu")
    config.model.attention_backend = "auto"
    resolve_auto_fields(config, "cpu")
    assert config.model.attention_backend == "xla"
    assert "attention_backend=auto -> 'xla'" in capsys.readouterr().out


def test_dropout_keeps_the_configured_fraction_and_the_mean():
    x = jnp.ones((256, 1024))
    out = dropout(x, 0.1, jax.random.key(0))
    kept = float(jnp.mean(out > 0))
    assert abs(kept - keep_threshold(0.1) / 2**16) < 0.005
    assert abs(float(jnp.mean(out)) - 1.0) < 0.01  # kept elements scaled by 1 / keep


def tiny_bert_loss(compute_dtype: str) -> float:
    from test_parallel import random_mlm_batch

    from fmjax.models import build_model
    from fmjax.tasks import build_task

    config = experiment_config("bert_tiny", "smoke")
    config.model.update(compute_dtype=compute_dtype, attention_backend="xla", vocab_size=512)
    task = build_task(config)
    with nnx.use_eager_sharding(False):
        model = build_model(config.model, nnx.Rngs(0))
    batch = random_mlm_batch(task, 8, config.model.vocab_size)
    batch = jax.tree.map(jnp.asarray, batch)
    loss, _ = task.loss_and_metrics(model, batch, deterministic=True, rngs=None)
    return float(loss)


def test_bfloat16_loss_stays_close_to_float32():
    """Scores and logits accumulate in float32 (preferred_element_type): a bfloat16 tiny BERT's
    MLM loss stays within 1% of the float32 model's (same weights)."""
    loss32, loss16 = tiny_bert_loss("float32"), tiny_bert_loss("bfloat16")
    assert np.isfinite(loss16)
    assert abs(loss16 - loss32) / loss32 < 0.01, (loss32, loss16)


def test_compile_report_counts_every_layer_and_microbatch(tmp_path):
    """XLA counts a loop body once; compile.json's flops_per_step counts every trip: scanned
    layers with 2 microbatches report the unrolled, one-piece step's FLOPs. The plain step is
    gpt_tiny.py's own (tests/test_experiments.py leaves its compile check to this test)."""
    from fmjax.train import trainer

    config = experiment_config("gpt_tiny")
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.train.batch_size = 16  # 8-way data parallel, 2 microbatches
    plain = trainer.compile_report(config.copy_and_resolve_references(), str(tmp_path / "plain"))
    assert plain["num_devices"] == 8 and plain["per_device"]["argument_bytes"] > 0
    assert 0.5 < plain["model_flops_per_step"] / plain["flops_per_step"] < 1.5
    config.model.update(scan_layers=True, remat="dots_with_no_batch_dims_saveable")
    config.train.grad_accum_steps = 2
    looped = trainer.compile_report(config, str(tmp_path / "looped"))
    assert config.model.num_layers > 1
    # remat recomputes some forward matmuls: more FLOPs than the plain step, never fewer.
    assert plain["flops_per_step"] <= looped["flops_per_step"] < 1.5 * plain["flops_per_step"]
    assert 0.5 < looped["model_flops_per_step"] / looped["flops_per_step"] < 1.5
