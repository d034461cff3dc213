"""Tools around a trained run's workdir: HF export/import, attention maps, model card, ..."""
