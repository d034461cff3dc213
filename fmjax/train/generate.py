"""Text generation from a trained causal LM: a jit-compiled KV-cache decode loop, seeded.

python -m fmjax.main --config experiments/gpt_tiny.py --workdir runs/gpt_tiny --mode=generate \
    --config.generate.prompt="ROMEO:|JULIET:" --config.generate.temperature=0
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.errors import ConfigError

NEG_INF = -1e30


def sample_next(
    logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int, top_p: float
) -> jax.Array:
    """Next token ids [B] from float32 logits [B, V]: greedy at temperature 0, else sampled
    from softmax(logits / temperature) restricted to the top_k tokens and the top_p nucleus."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if 0 < top_k < logits.shape[-1]:
        kth_largest = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth_largest, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        cutoff_index = jnp.sum(cumulative < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, ...]:
    """Prompts of different lengths right-aligned in [B, P]: (ids, segment ids, positions).

    Padding has segment id 0 (never attended by real tokens); each row's positions start at 0
    at its first real token.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    length = max(len(p) for p in prompts)
    ids = np.full((len(prompts), length), pad_id, np.int32)
    segments = np.zeros((len(prompts), length), np.int32)
    positions = np.zeros((len(prompts), length), np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = prompt
        segments[row, length - len(prompt) :] = 1
        positions[row, length - len(prompt) :] = np.arange(len(prompt))
    return ids, segments, positions


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "end_id"),
)
def decode(
    graphdef: Any,
    params: Any,
    prompt_ids: jax.Array,
    prompt_segments: jax.Array,
    prompt_positions: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    end_id: int | None,
) -> jax.Array:
    """New token ids [B, max_new_tokens] after left-padded prompts [B, P] (see `left_pad`).

    One forward over the prompts fills the KV cache, then a while_loop appends one token per
    step; the token of step i is drawn with fold_in(rng, i), so a seed fixes the output. A
    sequence that emits `end_id` is done: its later slots hold end_id, and the loop stops when
    every sequence is done (end_id None: always max_new_tokens steps).
    """
    model = nnx.merge(graphdef, params)
    batch_size, prompt_length = prompt_ids.shape
    cache = model.init_cache(batch_size, prompt_length + max_new_tokens)
    logits, cache = model(
        prompt_ids, prompt_positions, prompt_segments, deterministic=True, cache=cache
    )
    ones = jnp.ones((batch_size, 1), jnp.int32)
    fill = 0 if end_id is None else end_id

    def step(carry):
        i, cache, last_logits, positions, out, done = carry
        token = sample_next(
            last_logits,
            jax.random.fold_in(rng, i),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        token = jnp.where(done, fill, token)
        out = out.at[:, i].set(token)
        if end_id is not None:
            done = done | (token == end_id)
        logits, cache = model(token[:, None], positions, ones, deterministic=True, cache=cache)
        return i + 1, cache, logits[:, -1], positions + 1, out, done

    def unfinished(carry):
        return (carry[0] < max_new_tokens) & ~jnp.all(carry[-1])

    carry = (
        jnp.int32(0),
        cache,
        logits[:, -1],
        prompt_positions[:, -1:] + 1,
        jnp.full((batch_size, max_new_tokens), fill, jnp.int32),
        jnp.zeros((batch_size,), bool),
    )
    return jax.lax.while_loop(unfinished, step, carry)[-2]


def generate_ids(
    graphdef: Any,
    params: Any,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    pad_id: int = tokenizer_lib.END_OF_TEXT_ID,  # any id: left padding is masked out
    end_id: int | None = tokenizer_lib.END_OF_TEXT_ID,
) -> np.ndarray:
    """Continuations [len(prompts), max_new_tokens] of token-id prompts of any lengths; a
    continuation that reaches end_id (<|endoftext|>) is filled with end_id from there on."""
    ids, segments, positions = left_pad(prompts, pad_id)
    out = decode(
        graphdef,
        params,
        jnp.asarray(ids),
        jnp.asarray(segments),
        jnp.asarray(positions),
        jax.random.key(seed),
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        end_id=None if end_id is None else int(end_id),
    )
    return np.asarray(jax.device_get(out))


def generate(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Prints and returns continuations of config.generate.prompt from the latest checkpoint."""
    from fmjax.data.clm import load_tokenizer
    from fmjax.train.run import log, open_run

    settings = config.get("generate")
    if settings is None:
        raise ConfigError("config has no 'generate' section; use a GPT experiment file")
    if float(settings.temperature) < 0 or not 0.0 < float(settings.top_p) <= 1.0:
        raise ConfigError("generate.temperature must be >= 0 and generate.top_p in (0, 1]")
    with open_run(config) as run:
        state, step = run.restore_latest(workdir)
        tok = load_tokenizer(config)
        eot = tokenizer_lib.end_of_text_id(tok)
        texts = str(settings.prompt).split("|")
        prompts = [[eot, *tok.encode(t, add_special_tokens=False).ids] for t in texts]
        prompts = [p for p in prompts for _ in range(int(settings.num_samples))]
        longest = max(len(p) for p in prompts) + int(settings.max_new_tokens)
        if config.model.position_embedding == "learned" and longest > config.model.max_seq_len:
            raise ConfigError(
                f"prompt + generate.max_new_tokens = {longest} tokens > model.max_seq_len="
                f"{config.model.max_seq_len}; shorten the prompt or lower max_new_tokens"
            )
        graphdef = run.program.graphdef
    # Decoding runs outside the training mesh's sharding rules: a few prompts need not divide
    # over the data-parallel devices.
    new_ids = generate_ids(
        graphdef,
        state["params"],
        prompts,
        max_new_tokens=int(settings.max_new_tokens),
        temperature=float(settings.temperature),
        top_k=int(settings.top_k),
        top_p=float(settings.top_p),
        seed=int(settings.seed),
        pad_id=eot,
        end_id=eot,
    )
    outputs = []
    log(f"generating from checkpoint step {step}")
    for prompt, row in zip(prompts, new_ids, strict=True):
        row = list(row)
        if eot in row:  # the model ended the document
            row = row[: row.index(eot)]
        text = tok.decode(prompt[1:] + row, skip_special_tokens=True)
        outputs.append(text)
        if jax.process_index() == 0:
            print(f"----- prompt {tok.decode(prompt[1:])!r}\n{text}", flush=True)
    return outputs
