"""Gradient x input token attributions of a fine-tuned text classifier (bert_classifier).

python -m fmjax.tools.attributions --workdir runs/bert_tiny_cls --text "a gorgeous, witty film"

For the class the model predicts (or --target), each token's attribution is
sum_d (d s / d e_td) * e_td over its token embedding e_t (gradient x input, Shrikumar et al.
2016: the first-order Taylor term of s in that token's embedding), where s is the target's
log-odds log p / (1 - p): positive pushes towards the class, negative away. Prints the tokens
with their scores and writes a bar chart PNG
(default WORKDIR/attributions.png) and the numbers as JSON next to it.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmjax.errors import ConfigError
from fmjax.tools.workdir import load_run, make_model, read_json, run_cli, tool_parser


def target_log_odds(logits: jax.Array, target: int) -> jax.Array:
    """log p / (1 - p) of the target class: its logit minus the logsumexp of the others (the
    logit difference for two classes); unlike p it does not saturate, unlike a raw logit it
    does not depend on the softmax's free shift."""
    others = jnp.delete(logits, target, assume_unique_indices=True)
    return logits[target] - jax.nn.logsumexp(others)


def gradient_x_input(
    model: nnx.Module, input_ids: np.ndarray, target: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(attributions [L], class probabilities [C], target class) of one sequence of ids [L].

    The target defaults to the predicted class.
    """
    ids = jnp.asarray(input_ids, jnp.int32)[None, :]
    mask = jnp.ones_like(ids)
    embeddings = model.embed_tokens(ids).astype(jnp.float32)

    def logits_of(token_embeddings: jax.Array) -> jax.Array:
        return model.classify(token_embeddings, mask, deterministic=True)[0]

    logits = logits_of(embeddings)
    target = int(jnp.argmax(logits)) if target is None else int(target)
    if not 0 <= target < logits.shape[-1]:
        raise ConfigError(f"--target={target}: the model has {logits.shape[-1]} classes")
    gradients = jax.grad(lambda e: target_log_odds(logits_of(e), target))(embeddings)
    scores = jnp.sum(gradients * embeddings, axis=-1)[0]
    return np.asarray(scores), np.asarray(jax.nn.softmax(logits)), target


def plot_attributions(tokens: list[str], scores: np.ndarray, title: str, path: str) -> None:
    """A bar per token (red: towards the class, blue: away from it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(4.0, 0.45 * len(tokens) + 1.5), 3.6))
    colors = ["tab:red" if s >= 0 else "tab:blue" for s in scores]
    axes.bar(range(len(tokens)), scores, color=colors)
    axes.axhline(0.0, color="black", linewidth=0.6)
    axes.set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=8)
    axes.set_ylabel("gradient x input")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def class_names_of(workdir: str, num_classes: int) -> list[str]:
    """The run's class names (from its data provenance), or "class i"."""
    names = (read_json(os.path.join(workdir, "manifest.json")).get("data") or {}).get("class_names")
    if names and len(names) == num_classes:
        return list(names)
    return [f"class {i}" for i in range(num_classes)]


def attributions(
    workdir: str, text: str, out: str | None = None, target: int | None = None
) -> dict:
    """Attributions of `text` for the latest checkpoint of a bert_classifier workdir."""
    run = load_run(workdir)
    if run.config.model.family != "bert_classifier":
        raise ConfigError(
            f"model.family={run.config.model.family!r}: attributions need a fine-tuned "
            "text classifier (bert_classifier, e.g. experiments/bert_tiny_cls.py)"
        )
    max_len = int(run.config.get("data", {}).get("seq_len", run.config.model.max_seq_len))
    ids = run.tokenizer.encode(text).ids  # [CLS] text [SEP]
    if len(ids) <= 2:
        raise ConfigError("--text gives no tokens")
    if len(ids) > max_len:
        print(f"fmjax: {len(ids)} tokens; keeping the first {max_len} (the run's data.seq_len)")
        ids = ids[: max_len - 1] + ids[-1:]
    model = make_model(run.config.model, run.params)
    scores, probabilities, target = gradient_x_input(model, np.asarray(ids), target)
    tokens = [run.tokenizer.id_to_token(i) for i in ids]
    names = class_names_of(workdir, len(probabilities))
    out = out or os.path.join(workdir, "attributions.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    title = (
        f"step {run.step}: towards {names[target]!r} (p={probabilities[target]:.2f}); {text[:50]!r}"
    )
    plot_attributions(tokens, scores, title, out)
    result = {
        "text": text,
        "tokens": tokens,
        "attributions": [float(s) for s in scores],
        "target": names[target],
        "probabilities": {name: float(p) for name, p in zip(names, probabilities, strict=True)},
        "step": run.step,
        "png": out,
    }
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(result, f, indent=2)
    return result


def format_attributions(result: dict) -> str:
    """Tokens and scores as a small table, with the predicted probabilities."""
    probabilities = " ".join(f"{k}={v:.3f}" for k, v in result["probabilities"].items())
    width = max(len(t) for t in result["tokens"])
    largest = max(1e-9, *(abs(s) for s in result["attributions"]))
    rows = [
        f"{token:<{width}}  {score:+.4f}  "
        + ("+" if score >= 0 else "-") * round(20 * abs(score) / largest)
        for token, score in zip(result["tokens"], result["attributions"], strict=True)
    ]
    return "\n".join(
        [f"probabilities: {probabilities}", f"attributions towards {result['target']!r}:", *rows]
    )


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("fmjax.tools.attributions", __doc__, "a fine-tuned bert_classifier run")
    parser.add_argument("--text", required=True, help="the text to classify and explain")
    parser.add_argument("--out", default=None, help="PNG path (default WORKDIR/attributions.png)")
    parser.add_argument(
        "--target", type=int, default=None, help="class index to explain (default: predicted)"
    )
    args = parser.parse_args(argv)
    result = run_cli(attributions, args.workdir, args.text, args.out, args.target)
    print(format_attributions(result))
    print(f"fmjax: wrote {result['png']}")


if __name__ == "__main__":
    main()
