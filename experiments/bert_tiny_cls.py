"""Fine-tune the pretrained bert_tiny on Rotten Tomatoes sentiment (fresh vs rotten).

python -m fmjax.main --config experiments/bert_tiny.py --workdir runs/bert_tiny   # pretrain first
python -m fmjax.main --config experiments/bert_tiny_cls.py --workdir runs/bert_tiny_cls
Presets (comma-separated): "scratch" (the same model, tokenizer and budget from a random init:
what pretraining buys), "supersense" (WordNet glosses -> 45 supersenses), "smoke" (seconds, for
tests). Eval: the whole held-out test split: accuracy, macro precision / recall / F1, confusion
matrix.
"""

import ml_collections

from fmjax.experiments import (
    bert_model,
    from_scratch,
    parse_preset,
    smoke_classifier,
    text_classification_config,
    train_schedule,
)

PRETRAINED = "runs/bert_tiny"  # the workdir of experiments/bert_tiny.py
NUM_CLASSES = {"rotten_tomatoes": 2, "wordnet_supersenses": 45}


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "bert_tiny_cls", smoke=False, scratch=False, supersense=False)
    dataset = "wordnet_supersenses" if presets.supersense else "rotten_tomatoes"

    # The pretrained model's fields: every encoder parameter must have its shape.
    model = bert_model(
        "tiny",
        family="bert_classifier",
        num_classes=NUM_CLASSES[dataset],
        pooler=False,  # True: BERT's dense + tanh on [CLS] (new weights: bert_tiny has no NSP)
        classifier_dropout_rate=0.1,
    )
    # Review snippets average ~26 words; glosses are shorter.
    config = text_classification_config(model, dataset, 64, PRETRAINED)

    # ~3 epochs of the 11,128 train reviews at batch 32, or less than one of the 105,760 train
    # glosses; eval = the whole test split (1,680 reviews, 11,899 glosses). BERT's fine-tuning
    # recipe otherwise (base_config's AdamW: warmup 100, weight decay 0.01).
    num_steps = 2000 if presets.supersense else 1000
    train_schedule(
        config, num_steps, 32, eval_every=num_steps // 2, learning_rate=1e-4, log_every=50
    )
    if presets.scratch:
        from_scratch(config, PRETRAINED)
    if presets.smoke:  # seconds: for tests and quick checks (init_from is set by the test)
        smoke_classifier(config, eval_every=8)
    return config
