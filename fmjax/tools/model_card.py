"""Write WORKDIR/MODEL_CARD.md from what a run left in its workdir.

python -m fmjax.tools.model_card --workdir runs/gpt_tiny

Sources: config.json (model, task, data, optimizer), manifest.json (git revision, packages,
devices, data provenance: package, version, sha256, tokenizer), metrics.jsonl (training curve),
eval.json and the eval records (held-out results), import.json (weights imported from HF) and
the checkpoints. Every number is copied from those files; nothing is re-measured.
"""

from __future__ import annotations

import json
import math
import os
import time

import ml_collections

from fmjax.tools.workdir import abstract_params, read_config, read_json, run_cli, tool_parser

# What each bundled dataset is and the biases it carries, for the "Bias, risks" section.
DATA_NOTES = {
    "shakespeare": (
        "The complete plays of William Shakespeare (written c. 1590-1613): Early Modern English "
        "verse and prose drama, with speaker names and stage directions. The text carries its "
        "period's views and a model trained on it reproduces them: antisemitic caricature "
        "(Shylock in The Merchant of Venice), racial and colonial stereotypes (Othello, Caliban "
        "in The Tempest), misogyny and rigid gender roles (The Taming of the Shrew), violence, "
        "slurs and period insults, and a strict class hierarchy. Its vocabulary, spelling and "
        "grammar are not modern English, and all of it is one author's fiction."
    ),
    "gcide": (
        "GCIDE: Webster's Revised Unabridged Dictionary (1913) with later additions, including "
        "many illustrative quotations from 17th-19th-century English and American authors. "
        "Definitions reflect their time: dated or offensive descriptions of ethnic groups, "
        "nationalities, religions, women and disabled people, colonial-era terms, and obsolete "
        "scientific, medical and legal claims stated as fact. A model trained on it can "
        "reproduce those descriptions and present outdated claims confidently."
    ),
    "fashion_mnist": (
        "Fashion-MNIST: 28x28 grayscale photos of Zalando catalogue products in 10 clothing "
        "classes. It covers one Western online retailer's product photography on plain "
        "backgrounds: it says nothing about clothing worn by people, other cultures' garments, "
        "or real-world photos, and class boundaries (shirt / T-shirt / pullover) are ambiguous."
    ),
}
FAMILY_NAMES = {"bert": "BERT", "gpt": "GPT", "vit": "ViT"}
GENERIC_DATA_NOTE = (
    "No corpus-specific note is recorded for this dataset: read its documentation (datasheet, "
    "collection process) for the biases it carries before using the model."
)


def _read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    records = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a killed run
    return records


def _number(value) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| field | value |", "| --- | --- |"]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows if value not in (None, "")]
    return "\n".join(lines)


def _parameter_count(model: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """(all parameters, parameters outside embedding tables), from the config alone."""
    try:
        _, params = abstract_params(model)
    except Exception:  # noqa: BLE001 - a family this version cannot build: leave it out
        return None
    import jax

    total, embeddings = 0, 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        size = math.prod(leaf.shape)
        total += size
        if str(getattr(path[0], "key", "")).endswith("_embed"):  # token/position/type tables
            embeddings += size
    return total, total - embeddings


def _latest_checkpoint(workdir: str) -> int | None:
    directory = os.path.join(workdir, "checkpoints")
    steps = (
        [int(name) for name in os.listdir(directory) if name.isdigit()]
        if os.path.isdir(directory)
        else []
    )
    return max(steps) if steps else None


def training_summary(records: list[dict], config: ml_collections.ConfigDict) -> dict:
    """First / last / min train loss, steps, tokens or examples seen, throughput."""
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    if not train:
        return {}
    best = min(train, key=lambda r: r["loss"])
    last_step = train[-1]["step"]
    batch = int(config.train.batch_size)
    summary = {
        "logged train records": len(train),
        "last logged step": last_step,
        "first loss (step)": f"{train[0]['loss']:.4f} (step {train[0]['step']})",
        "last loss (step)": f"{train[-1]['loss']:.4f} (step {last_step})",
        "min loss (step)": f"{best['loss']:.4f} (step {best['step']})",
        "examples seen": last_step * batch,
    }
    seq_len = config.data.get("seq_len")
    if seq_len:
        summary["tokens seen (steps x batch x seq_len, padding included)"] = (
            last_step * batch * int(seq_len)
        )
    throughput = sorted(r["tokens_per_s"] for r in train if r.get("tokens_per_s"))
    if throughput:
        summary["median tokens/s"] = throughput[len(throughput) // 2]
    skipped = train[-1].get("skipped_steps")
    if skipped is not None:
        summary["skipped non-finite steps"] = skipped
    return summary


def evaluation_rows(workdir: str, records: list[dict]) -> list[tuple[str, object]]:
    """The last held-out record of each eval split, then eval.json (--mode=eval)."""
    rows = []
    last_by_split: dict[str, dict] = {}
    for record in records:
        if record.get("split") != "train":
            last_by_split[record.get("split", "eval")] = record
    for split, record in last_by_split.items():
        for name, value in record.items():
            if name not in ("step", "split"):
                rows.append((f"{split} {name} (step {record['step']})", value))
    evaluation = read_json(os.path.join(workdir, "eval.json"))
    for name, value in evaluation.items():
        if name not in ("step", "split"):
            rows.append((f"--mode=eval {name} (step {evaluation.get('step')})", value))
    return rows


def model_card(workdir: str) -> str:
    """Writes WORKDIR/MODEL_CARD.md and returns its path."""
    config = read_config(workdir)
    manifest = read_json(os.path.join(workdir, "manifest.json"))
    imported = read_json(os.path.join(workdir, "import.json"))
    records = _read_metrics(workdir)
    model, data, train = config.model, config.data, config.train
    provenance = manifest.get("data") or {}
    dataset = str(data.get("corpus") or data.get("dataset") or "unknown")
    family, task = model.get("family", "?"), config.task.get("name", "?")
    step = _latest_checkpoint(workdir)
    counts = _parameter_count(model)
    name = os.path.basename(os.path.abspath(workdir))

    sections = [
        f"# Model card: {name}",
        f"A {FAMILY_NAMES.get(family, family)} model ({task}) trained with fmjax on "
        f"`{dataset}`; latest checkpoint: step {step}. Written by "
        f"`python -m fmjax.tools.model_card` on {time.strftime('%Y-%m-%d', time.gmtime())} "
        "from the files in the workdir: the numbers below are copied from them (parameter "
        "counts are computed from the config), nothing is re-measured.",
        "## Model details",
        _table(
            [
                ("family / task", f"{family} / {task}"),
                ("layers", model.get("num_layers")),
                (
                    "embed dim / heads x head dim",
                    f"{model.get('embed_dim')} / "
                    f"{model.get('num_heads')} x {model.get('head_dim')}",
                ),
                (
                    "MLP dim / activation",
                    f"{model.get('mlp_dim')} / {model.get('mlp_activation', 'gelu')}",
                ),
                ("vocabulary (model rows)", model.get("vocab_size")),
                ("max sequence length", model.get("max_seq_len")),
                (
                    "positions",
                    model.get("position_embedding", "learned" if family == "bert" else None),
                ),
                ("norm position", model.get("norm_position")),
                ("parameters", counts[0] if counts else None),
                ("parameters outside embedding tables", counts[1] if counts else None),
                ("compute dtype (params float32)", model.get("compute_dtype")),
                ("checkpoint step", step),
                ("git revision", manifest.get("git_revision")),
                ("created", manifest.get("created")),
                ("devices", json.dumps(manifest.get("devices"))),
                (
                    "packages",
                    ", ".join(f"{k} {v}" for k, v in (manifest.get("packages") or {}).items()),
                ),
                ("seed", config.get("seed")),
            ]
        ),
        "## Intended use",
        "Research and teaching: studying how a foundation model is pretrained, sharded, "
        "checkpointed and evaluated, and a starting point for fine-tuning experiments on text "
        "like the training data. It is not intended for production use, for answering factual "
        "questions, for generating text presented as written by a person, or for any decision "
        "about people.",
        "## Training data",
        _table(
            [
                ("dataset", dataset),
                ("package", provenance.get("package")),
                ("package version", provenance.get("version")),
                ("source file", provenance.get("source_file")),
                ("source sha256", provenance.get("sha256")),
                (
                    "TFDS builder",
                    f"{provenance.get('tfds_name')} {provenance.get('tfds_version')}"
                    if provenance.get("tfds_name")
                    else None,
                ),
                (
                    "train / eval sequences",
                    f"{provenance.get('num_train_sequences')} / "
                    f"{provenance.get('num_eval_sequences')}"
                    if "num_train_sequences" in provenance
                    else None,
                ),
                (
                    "held-out documents",
                    "; ".join(provenance.get("validation_titles") or []) or None,
                ),
                (
                    "documents: train / held out",
                    f"{provenance.get('num_train_docs')} / {provenance.get('num_validation_docs')}"
                    if "num_train_docs" in provenance
                    else None,
                ),
                ("sequence length", data.get("seq_len")),
                ("tokenizer", _tokenizer_line(provenance.get("tokenizer") or {})),
                (
                    "classes (label ids in order)",
                    ", ".join(map(str, provenance.get("class_names") or [])) or None,
                ),
                ("train / test files", _labeled_files_line(provenance)),
            ]
        ),
    ]
    if imported:
        sections += [
            "Weights imported from Hugging Face before any fmjax training "
            "(`fmjax.tools.import_hf`):",
            _table(
                [
                    ("source directory", imported.get("hf_dir")),
                    (
                        "model type / architectures",
                        f"{imported.get('model_type')} / "
                        f"{', '.join(imported.get('architectures') or [])}",
                    ),
                    (
                        "weight files (sha256)",
                        ", ".join(f"{k} {v}" for k, v in imported.get("weight_files", {}).items()),
                    ),
                    (
                        "tensors not imported",
                        ", ".join(imported.get("unused_tensors") or []) or "none",
                    ),
                ]
            ),
        ]
    sections += [
        "## Training procedure",
        _table(
            [
                (
                    "optimizer",
                    f"AdamW (b1 {train.get('adam_b1')}, b2 {train.get('adam_b2')}, "
                    f"eps {train.get('adam_eps')}), weight decay {train.get('weight_decay')}",
                ),
                (
                    "learning rate",
                    f"{train.get('learning_rate')} peak, {train.get('warmup_steps')} "
                    f"warmup steps, {train.get('schedule')} decay",
                ),
                ("gradient clipping (global norm)", train.get("grad_clip_norm")),
                ("global batch size", train.get("batch_size")),
                ("configured steps", train.get("num_steps")),
                (
                    "dropout / attention dropout",
                    f"{model.get('dropout_rate')} / {model.get('attention_dropout_rate')}",
                ),
                (
                    "mesh (data, fsdp, tensor)",
                    json.dumps(config.get("mesh", {}).to_dict() if config.get("mesh") else None),
                ),
                ("command", manifest.get("command")),
            ]
        ),
        "## Training curve",
        _table(list(training_summary(records, config).items()))
        if records
        else "No metrics.jsonl: the model has not been trained in this workdir.",
        "## Evaluation",
        (
            _table(evaluation_rows(workdir, records)) + "\n\nHeld-out data is from the same corpus "
            "(other documents), so these numbers say nothing about other kinds of text."
        )
        if evaluation_rows(workdir, records)
        else "No evaluation recorded (run `--mode=eval` or train past `train.eval_every`).",
        "## Limitations",
        _limitations(config, records, dataset),
        "## Bias, risks and safety",
        DATA_NOTES.get(dataset, GENERIC_DATA_NOTE),
        (
            f"The weights were imported from `{imported.get('hf_dir')}`: what they were pretrained "
            "on is not recorded here; read the original model's card too."
        )
        if imported
        else "",
        "The model was not evaluated for toxicity, social bias or factual accuracy, and the "
        "corpus was not filtered. Review its outputs before showing them to anyone, and do not "
        "use it to make or support decisions about people.",
    ]
    path = os.path.join(workdir, "MODEL_CARD.md")
    with open(path, "w") as f:
        f.write("\n\n".join(section for section in sections if section) + "\n")
    return path


def _labeled_files_line(provenance: dict) -> str | None:
    """Your own labeled files (data.dataset=files:...): paths, sha256, rows used and skipped."""
    if "train_file" not in provenance:
        return None
    held_out = provenance.get("test_file") or (
        f"a hash split of {provenance.get('test_fraction')} (seed {provenance.get('hash_seed')})"
    )
    return (
        f"{provenance['train_file']} (sha256 {provenance.get('train_sha256')}) / {held_out}; "
        f"{provenance.get('num_train_examples')} / {provenance.get('num_test_examples')} rows, "
        f"skipped: {json.dumps(provenance.get('skipped_rows'), ensure_ascii=False)}"
    )


def _tokenizer_line(tokenizer: dict) -> str | None:
    if not tokenizer:
        return None
    return (
        f"{tokenizer.get('kind')}, {tokenizer.get('vocab_size')} tokens, sha256 "
        f"{tokenizer.get('sha256')}"
    )


def _limitations(config: ml_collections.ConfigDict, records: list[dict], dataset: str) -> str:
    items = []
    steps = max((r.get("step", 0) for r in records), default=0)
    if steps < int(config.train.num_steps):
        items.append(f"Trained for {steps} of the configured {config.train.num_steps} steps.")
    items.append(
        f"A small-compute run on one corpus (`{dataset}`): expect often wrong or incoherent "
        "output and no knowledge beyond that corpus."
    )
    if config.model.get("max_seq_len"):
        items.append(f"Sees at most {config.model.max_seq_len} tokens of context.")
    if config.model.get("family") in ("bert", "gpt"):
        items.append(
            "English only; the tokenizer was built for this corpus (or came with the "
            "imported weights) and splits other text into many pieces."
        )
    return "\n".join(f"- {item}" for item in items)


def main(argv: list[str] | None = None) -> None:
    parser = tool_parser("fmjax.tools.model_card", __doc__, "fmjax run directory")
    args = parser.parse_args(argv)
    print(f"fmjax: wrote {run_cli(model_card, args.workdir)}")


if __name__ == "__main__":
    main()
