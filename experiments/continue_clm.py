"""Continue causal-LM training of whatever GPT train.init_from points at (e.g. an imported
GPT-2) on a corpus, and generate from it.

python -m fmjax.tools.import_hf --hf_dir ~/models/gpt2 --workdir runs/gpt2_hf
python -m fmjax.main --config experiments/continue_clm.py --workdir runs/gpt2_adapted \
    --config.train.init_from=runs/gpt2_hf --config.data.corpus=shakespeare
python -m fmjax.main --config experiments/continue_clm.py --workdir runs/gpt2_adapted \
    --config.train.init_from=runs/gpt2_hf --mode=generate --config.generate.prompt="ROMEO:"
python -m fmjax.tools.export_hf --workdir runs/gpt2_adapted --out runs/gpt2_adapted/hf

The model's fields and its tokenizer (whose <|endoftext|> separates documents and ends
generation) come from train.init_from's workdir. Presets: "smoke".
"""

import ml_collections

from fmjax.experiments import (
    causal_lm_task,
    continued_pretraining_config,
    cosine_adamw,
    generate_config,
    parse_preset,
)


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    presets = parse_preset(preset, "continue_clm", smoke=False)
    optimizer = cosine_adamw(1e-4, 0.1, 0.99)
    config = continued_pretraining_config(
        "gpt", causal_lm_task(), presets.smoke, batch_size=16, **optimizer
    )
    config.generate = generate_config()
    if presets.smoke:
        config.generate.update(max_new_tokens=8)
    return config
