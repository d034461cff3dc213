"""GPT: causal + segment masking, packing, KV-cache decoding, generation, training, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from run_records import metric_records
from sharding_checks import (
    GOLDEN_MESHES,
    assert_golden_partition_specs,
    assert_params_split_evenly,
    build_on_mesh,
)

from fmjax.data.text import causal_lm_example, pack_documents, segment_positions
from fmjax.experiments import experiment_config, gpt_model
from fmjax.models import build_model
from fmjax.models.attention import dot_product_attention
from fmjax.models.gpt import causal_segment_mask
from fmjax.parallel.mesh import make_mesh
from fmjax.parallel.sharding import sharding_context
from fmjax.tasks import build_task
from fmjax.train import generate, trainer
from fmjax.train.generate import generate_ids, left_pad, sample_next
from fmjax.train.step import build_program


def tiny_model(seed: int = 0, **overrides) -> nnx.Module:
    fields = dict(
        vocab_size=61, embed_dim=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64,
        max_seq_len=32, compute_dtype="float32",
    )  # fmt: skip
    fields.update(overrides)
    model_config = gpt_model("tiny", **fields)
    with nnx.use_eager_sharding(False):
        return build_model(model_config, nnx.Rngs(seed))


def forward_jax(model, ids):
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return model(ids, positions, jnp.ones_like(ids), deterministic=True)


def forward(model, ids, positions=None, segments=None):
    ids = jnp.asarray(ids, jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    if segments is None:
        segments = jnp.ones_like(ids)
    return np.asarray(model(ids, jnp.asarray(positions), jnp.asarray(segments), deterministic=True))


# --- masking -------------------------------------------------------------------------------


def test_causal_segment_attention_matches_naive_loop():
    rng = np.random.default_rng(0)
    segments = np.array([[1, 1, 1, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 2]], np.int32)
    batch, length, heads, dim = 2, 8, 3, 4
    mask = np.asarray(
        causal_segment_mask(
            jnp.asarray(segments), jnp.asarray(segments), jnp.arange(length), jnp.arange(length)
        )
    )
    q, k, v = (rng.normal(size=(batch, length, heads, dim)) for _ in range(3))
    out = np.asarray(dot_product_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), mask))
    for b in range(batch):
        for i in range(length):
            visible = [j for j in range(i + 1) if segments[b, j] == segments[b, i]]
            assert mask[b, 0, i].nonzero()[0].tolist() == visible
            for h in range(heads):
                scores = np.array([q[b, i, h] @ k[b, j, h] / np.sqrt(dim) for j in visible])
                weights = np.exp(scores - scores.max())
                weights = weights / weights.sum()
                expected = sum(w * v[b, j, h] for w, j in zip(weights, visible, strict=True))
                np.testing.assert_allclose(out[b, i, h], expected, atol=1e-5)


@pytest.mark.parametrize("position_embedding", ["learned", "rotary"])
def test_packed_documents_do_not_see_each_other(position_embedding):
    model = tiny_model(position_embedding=position_embedding)
    rng = np.random.default_rng(1)
    first, second = rng.integers(1, 61, size=5), rng.integers(1, 61, size=7)
    tokens, segments = pack_documents([first, second], seq_len=16)
    example = causal_lm_example(tokens[0], segments[0])
    packed = forward(model, tokens, example["positions"][None], segments)
    alone = forward(model, second[None])
    # The second document, packed after the first, gives the logits it gives on its own.
    np.testing.assert_allclose(packed[0, 5:12], alone[0], atol=1e-5)
    other = tokens.copy()
    other[0, :5] = rng.integers(1, 61, size=5)
    np.testing.assert_allclose(
        forward(model, other, example["positions"][None], segments)[0, 5:], packed[0, 5:], atol=1e-5
    )


# --- packing -------------------------------------------------------------------------------


def test_pack_documents_never_leaks_and_positions_restart():
    rng = np.random.default_rng(2)
    seq_len = 10
    documents = [list(rng.integers(1, 100, size=n)) for n in (3, 7, 1, 25, 10, 4, 9, 2)]
    tokens, segments = pack_documents(documents, seq_len, pad_id=0)
    assert tokens.shape == segments.shape and tokens.shape[1] == seq_len
    chunks = []
    for row_tokens, row_segments in zip(tokens, segments, strict=True):
        example = causal_lm_example(row_tokens, row_segments)
        ids = sorted(set(row_segments[row_segments > 0].tolist()))
        assert ids == list(range(1, len(ids) + 1))
        real = row_segments > 0
        assert not (real[1:] & ~real[:-1]).any(), "padding only at the end of a row"
        for segment in ids:
            where = np.flatnonzero(row_segments == segment)
            assert (np.diff(where) == 1).all()
            np.testing.assert_array_equal(example["positions"][where], np.arange(len(where)))
            chunks.append(row_tokens[where].tolist())
            # Targets: the next token of the same chunk; the chunk's last token predicts nothing.
            np.testing.assert_array_equal(example["target_ids"][where[:-1]], row_tokens[where[1:]])
            assert example["loss_weights"][where[-1]] == 0
            assert example["loss_weights"][where[:-1]].all()
        assert (example["loss_weights"][~real] == 0).all()
        assert (example["positions"][~real] == 0).all()
    # Every document comes back whole, in order: chunks are seq_len-sized cuts of one document.
    expected = [d[i : i + seq_len] for d in documents for i in range(0, len(d), seq_len)]
    assert chunks == [list(c) for c in expected]


def test_segment_positions_reference():
    segments = np.array([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        segment_positions(segments), [[0, 1, 0, 1, 2, 0, 0, 0], list(range(8))]
    )


# --- KV cache and generation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides", [dict(), dict(position_embedding="rotary", tie_embeddings=False)]
)
def test_kv_cache_decoding_matches_full_forward(overrides):
    model = tiny_model(**overrides)
    rng = np.random.default_rng(3)
    sequences = [rng.integers(1, 61, size=n).tolist() for n in (9, 12, 6)]
    prompt_lengths = (3, 7, 1)
    prompts = [s[:n] for s, n in zip(sequences, prompt_lengths, strict=True)]
    ids, segments, positions = left_pad(prompts, pad_id=0)
    steps = 5
    cache = model.init_cache(len(prompts), ids.shape[1] + steps)
    logits, cache = model(
        jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segments), deterministic=True,
        cache=cache,
    )  # fmt: skip
    cached = [logits[:, -1]]
    next_positions = positions[:, -1:] + 1
    for t in range(steps - 1):
        token = jnp.asarray([[s[n + t]] for s, n in zip(sequences, prompt_lengths, strict=True)])
        logits, cache = model(
            token, jnp.asarray(next_positions), jnp.ones_like(token), deterministic=True,
            cache=cache,
        )  # fmt: skip
        cached.append(logits[:, -1])
        next_positions = next_positions + 1
    cached = np.stack(cached, axis=1)  # [B, steps, V]
    for row, (sequence, n) in enumerate(zip(sequences, prompt_lengths, strict=True)):
        full = forward(model, [sequence[: n + steps - 1]])[0]
        np.testing.assert_allclose(cached[row], full[n - 1 :], atol=1e-4, rtol=1e-4)


def test_greedy_generation_is_the_argmax_rollout_and_deterministic():
    model = tiny_model(position_embedding="rotary")
    graphdef, params = nnx.split(model)
    prompts = [[5, 9, 3, 17], [8], [40, 2]]
    out = generate_ids(graphdef, params, prompts, max_new_tokens=6, temperature=0.0, seed=0)
    again = generate_ids(graphdef, params, prompts, max_new_tokens=6, temperature=0.0, seed=7)
    np.testing.assert_array_equal(out, again)
    # Causal: right-padding to a fixed length leaves the logits of real positions unchanged.
    full_forward = jax.jit(lambda ids: forward_jax(model, ids))
    for prompt, row in zip(prompts, out, strict=True):
        sequence = list(prompt)
        for _ in range(6):
            padded = jnp.asarray([sequence + [0] * (16 - len(sequence))])
            sequence.append(int(full_forward(padded)[0, len(sequence) - 1].argmax()))
        assert row.tolist() == sequence[len(prompt) :]


def test_sampling_is_reproducible_with_a_seed():
    graphdef, params = nnx.split(tiny_model())
    prompts = [[5, 9, 3], [8], [40, 2, 11, 12]]
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_k=20, top_p=0.9)
    first = generate_ids(graphdef, params, prompts, seed=1, **kwargs)
    np.testing.assert_array_equal(first, generate_ids(graphdef, params, prompts, seed=1, **kwargs))
    assert not np.array_equal(first, generate_ids(graphdef, params, prompts, seed=2, **kwargs))


def test_sample_next_filters():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.3, 0.15]]))
    keys = jax.random.split(jax.random.key(0), 200)

    def draws(**kwargs):
        sampled = jax.vmap(lambda key: sample_next(logits, key, temperature=1.0, **kwargs))(keys)
        return set(np.asarray(sampled).ravel().tolist())

    assert draws(top_k=1, top_p=1.0) == {1}
    assert draws(top_k=2, top_p=1.0) == {1, 2}
    assert draws(top_k=0, top_p=0.75) == {1, 2}  # 0.5 < 0.75 <= 0.5 + 0.3
    assert draws(top_k=0, top_p=0.4) == {1}
    assert draws(top_k=0, top_p=1.0) == {0, 1, 2, 3}
    greedy = sample_next(logits, keys[0], temperature=0.0, top_k=0, top_p=1.0)
    assert int(greedy[0]) == 1


# --- training, generation from a checkpoint, compile, sharding ----------------------------


def test_gpt_tiny_trains_and_generates(shared_data_dir, tmp_path, capsys):
    config = experiment_config("gpt_tiny.py", "smoke")
    config.data.data_dir = shared_data_dir
    workdir = str(tmp_path / "run")
    summary = trainer.train(config, workdir)
    train = metric_records(workdir, "train")
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    assert summary["eval_perplexity"] == pytest.approx(np.exp(summary["eval_loss"]), rel=1e-6)

    config = experiment_config("gpt_tiny.py", "smoke")
    config.data.data_dir = shared_data_dir
    config.generate.update(prompt="ROMEO:|KING", temperature=0.0, num_samples=2)
    texts = generate.generate(config, workdir)
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3]
    assert texts[0].startswith("ROMEO:") and texts[2].startswith("KING")
    assert "generating from checkpoint step 12" in capsys.readouterr().out


def test_gpt2_small_compiles_on_8_devices(tmp_path):
    config = experiment_config("gpt2_small.py")
    config.mesh.update(data=1, fsdp=8, tensor=1)
    config.train.batch_size = 8  # the compile check is about the sharded program, not the batch
    report = trainer.compile_report(config, str(tmp_path))
    assert report["num_devices"] == 8
    assert report["per_device"]["argument_bytes"] > 0
    # Params + AdamW moments of 124M float32 params, split 8 ways: about 1.5 GB / 8.
    assert 1.2e9 / 8 < report["per_device"]["argument_bytes"] < 2.2e9 / 8
    # XLA's count and the documented formula describe the same step.
    assert 0.5 < report["model_flops_per_step"] / report["flops_per_step"] < 1.5


# Mesh PartitionSpec of every gpt2_small parameter under the default rules; "*" = any layer.
GPT2_SMALL_GOLDEN_SPECS = {
    "token_embed/embedding": P("tensor", "fsdp"),
    "position_embed/embedding": P(None, "fsdp"),
    "decoder/layers/*/attention/query/kernel": P("fsdp", "tensor", None),
    "decoder/layers/*/attention/query/bias": P("tensor", None),
    "decoder/layers/*/attention/key/kernel": P("fsdp", "tensor", None),
    "decoder/layers/*/attention/key/bias": P("tensor", None),
    "decoder/layers/*/attention/value/kernel": P("fsdp", "tensor", None),
    "decoder/layers/*/attention/value/bias": P("tensor", None),
    "decoder/layers/*/attention/out/kernel": P("tensor", None, "fsdp"),
    "decoder/layers/*/attention/out/bias": P("fsdp"),
    "decoder/layers/*/attention_norm/scale": P(None),
    "decoder/layers/*/attention_norm/bias": P(None),
    "decoder/layers/*/mlp/wi/kernel": P("fsdp", "tensor"),
    "decoder/layers/*/mlp/wi/bias": P("tensor"),
    "decoder/layers/*/mlp/wo/kernel": P("tensor", "fsdp"),
    "decoder/layers/*/mlp/wo/bias": P("fsdp"),
    "decoder/layers/*/mlp_norm/scale": P(None),
    "decoder/layers/*/mlp_norm/bias": P(None),
    "decoder/final_norm/scale": P(None),
    "decoder/final_norm/bias": P(None),
}


@pytest.mark.parametrize("mesh_shape", GOLDEN_MESHES.values(), ids=GOLDEN_MESHES.keys())
def test_gpt2_small_partition_specs_are_golden(mesh_shape):
    config = experiment_config("gpt2_small.py")
    config.model.compute_dtype = "float32"
    config.model.vocab_size = 50304  # a multiple of mesh.tensor (50257 is odd)
    program = build_on_mesh(config, mesh_shape)
    assert_golden_partition_specs(program, GPT2_SMALL_GOLDEN_SPECS, num_layer_params=12 * 16)
    assert_params_split_evenly(program)
    params = jax.tree.leaves(program.abstract_state["params"])
    # GPT-2 small: 124M parameters with the tied head (at the padded vocab: +36k).
    assert sum(int(np.prod(p.shape)) for p in params) == pytest.approx(124.47e6, rel=0.002)


def test_untied_head_is_sharded_vocab_on_tensor():
    config = experiment_config("gpt_tiny.py", "smoke")
    config.model.update(tie_embeddings=False, position_embedding="rotary", compute_dtype="float32")
    config.mesh.update(data=2, fsdp=2, tensor=2)
    mesh = make_mesh(config.mesh)
    with sharding_context(config, mesh):
        program = build_program(config, build_task(config), mesh)
    params = program.state_shardings["params"]
    assert params["lm_head"].spec == P("fsdp", "tensor")
    assert "position_embed" not in params
