"""BERT-large masked-LM pretraining: 24 layers, hidden 1024, 16 heads, FFN 4096.

Same recipe and corpus as bert_base.py; shard it with fsdp on real hardware:
    --config.mesh.fsdp=-1 --config.mesh.data=1
"""

import ml_collections

from fmjax.config import load_sibling_experiment

bert_base = load_sibling_experiment(__file__, "bert_base.py")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    config = bert_base.get_config(preset)
    config.model.update(embed_dim=1024, num_layers=24, num_heads=16, mlp_dim=4096)
    return config
