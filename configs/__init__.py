"""The default configs, installed as package data `medlvr.configs` (pyproject's package-dir maps this folder), so
that a wheel install finds them: `medlvr.corpus.package_data.shipped_config("sft_tiny.yaml")`. No code lives here."""
