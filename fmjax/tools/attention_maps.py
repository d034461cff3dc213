"""Attention maps of a BERT or GPT run on a text: PNG heatmaps per layer and head, and a grid.

python -m fmjax.tools.attention_maps --workdir runs/gpt_tiny --text "ROMEO: But soft"

writes OUT/layer{L}_head{H}.png (rows: query tokens, columns: key tokens; each row is a
probability distribution), OUT/overview.png (every layer x head), OUT/attention_probabilities.npy
([layers, heads, tokens, tokens], float32) and OUT/tokens.json; OUT defaults to
WORKDIR/attention_maps. The probabilities are the model's own softmax, sown by each attention
layer (`MultiHeadAttention.sow_attention_probabilities`, off in training).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx

from fmjax.data import tokenizer as tokenizer_lib
from fmjax.errors import ConfigError
from fmjax.models.attention import MultiHeadAttention
from fmjax.tools.workdir import load_run, make_model, run_cli, tool_parser


def token_ids(
    tokenizer: tokenizers.Tokenizer, family: str, text: str, max_tokens: int
) -> list[int]:
    """The ids the model sees for `text`: [CLS] text [SEP] (BERT), <|endoftext|> text (GPT)."""
    if family == "bert":
        ids = tokenizer.encode(text).ids
    else:
        eot = tokenizer.token_to_id(tokenizer_lib.END_OF_TEXT)
        eot = tokenizer_lib.END_OF_TEXT_ID if eot is None else eot
        ids = [eot, *tokenizer.encode(text, add_special_tokens=False).ids]
    if len(ids) > max_tokens:
        print(f"fmjax: {len(ids)} tokens; showing the first {max_tokens} (--max_tokens)")
    return ids[:max_tokens]


def token_labels(tokenizer: tokenizers.Tokenizer, family: str, ids: list[int]) -> list[str]:
    """Readable axis labels: WordPiece tokens as they are, byte-level BPE tokens decoded."""
    if family == "bert":
        labels = [tokenizer.id_to_token(i) for i in ids]
    else:
        labels = [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
    return [label.replace("\n", "\\n").replace(" ", "·") for label in labels]


def attention_probabilities(model: nnx.Module, family: str, ids: list[int]) -> np.ndarray:
    """Attention probabilities [layers, heads, tokens, tokens] of one sequence (float32)."""
    attention_modules = [m for _, m in nnx.iter_modules(model) if isinstance(m, MultiHeadAttention)]
    batch = jnp.asarray([ids], jnp.int32)

    def forward(model: nnx.Module) -> jax.Array:
        if family == "bert":
            return model.encode(
                batch, jnp.zeros_like(batch), jnp.ones_like(batch), deterministic=True
            )
        positions = jnp.arange(len(ids))[None, :]
        return model(batch, positions, jnp.ones_like(batch), deterministic=True)

    for module in attention_modules:
        module.sow_attention_probabilities = True
    try:
        _, sown = nnx.capture(forward, nnx.Intermediate)(model)
    finally:
        for module in attention_modules:
            module.sow_attention_probabilities = False
    # Leaf paths are (..., "layers", i, "attention", "attention_probabilities", 0).
    by_layer = {}
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(sown)):
        keys = [getattr(key, "key", getattr(key, "idx", None)) for key in path]
        by_layer[int(keys[keys.index("layers") + 1])] = np.asarray(value[0])
    return np.stack([by_layer[layer] for layer in sorted(by_layer)])


def plot_head(probabilities: np.ndarray, labels: list[str], title: str, path: str) -> None:
    """One heatmap, query tokens down, key tokens across."""
    import matplotlib.pyplot as plt

    size = 2.5 + 0.22 * len(labels)
    figure, axes = plt.subplots(figsize=(size + 1.2, size))
    image = axes.imshow(probabilities, cmap="viridis", vmin=0.0, vmax=float(probabilities.max()))
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("key (attended to)")
    axes.set_ylabel("query")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_overview(probabilities: np.ndarray, labels: list[str], title: str, path: str) -> None:
    """All layers (rows) x heads (columns) in one grid; token labels on the first column/row."""
    import matplotlib.pyplot as plt

    num_layers, num_heads = probabilities.shape[:2]
    figure, grid = plt.subplots(
        num_layers,
        num_heads,
        figsize=(2.2 * num_heads + 1, 2.2 * num_layers + 1),
        squeeze=False,
    )
    show_labels = len(labels) <= 24
    for layer in range(num_layers):
        for head in range(num_heads):
            axes = grid[layer, head]
            axes.imshow(probabilities[layer, head], cmap="viridis", vmin=0.0)
            axes.set_title(f"layer {layer} head {head}", fontsize=8)
            axes.set_xticks([])
            axes.set_yticks([])
            if show_labels and head == 0:
                axes.set_yticks(range(len(labels)), labels, fontsize=5)
            if show_labels and layer == num_layers - 1:
                axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=5)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def attention_maps(workdir: str, text: str, out: str | None = None, max_tokens: int = 64) -> dict:
    """Writes the heatmaps of `text` for the latest checkpoint of `workdir`; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    run = load_run(workdir)
    family = run.config.model.family
    if family not in ("bert", "gpt"):
        raise ConfigError(
            f"model.family={family!r}: attention_maps supports text models (bert, gpt)"
        )
    ids = token_ids(run.tokenizer, family, text, min(max_tokens, int(run.config.model.max_seq_len)))
    if not ids:
        raise ConfigError("--text gives no tokens")
    labels = token_labels(run.tokenizer, family, ids)
    probabilities = attention_probabilities(make_model(run.config.model, run.params), family, ids)
    out = out or os.path.join(workdir, "attention_maps")
    os.makedirs(out, exist_ok=True)
    heads = []
    for layer in range(probabilities.shape[0]):
        for head in range(probabilities.shape[1]):
            path = os.path.join(out, f"layer{layer}_head{head}.png")
            title = f"{family} step {run.step}: layer {layer}, head {head}"
            plot_head(probabilities[layer, head], labels, title, path)
            heads.append(path)
    overview = os.path.join(out, "overview.png")
    plot_overview(probabilities, labels, f"{family} step {run.step}: {text[:60]!r}", overview)
    np.save(os.path.join(out, "attention_probabilities.npy"), probabilities)
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"text": text, "ids": ids, "labels": labels, "step": run.step}, f, indent=2)
    return {"heads": heads, "overview": overview, "probabilities": probabilities, "labels": labels}


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("fmjax.tools.attention_maps", __doc__, "fmjax run directory (BERT or GPT)")
    parser.add_argument("--text", required=True, help="the text to run the model on")
    parser.add_argument(
        "--out", default=None, help="output folder (default WORKDIR/attention_maps)"
    )
    parser.add_argument("--max_tokens", type=int, default=64, help="truncate the text's tokens")
    args = parser.parse_args(argv)
    written = run_cli(attention_maps, args.workdir, args.text, args.out, args.max_tokens)
    print(
        f"fmjax: wrote {len(written['heads'])} heatmaps and {written['overview']} "
        f"({len(written['labels'])} tokens)"
    )


if __name__ == "__main__":
    main()
