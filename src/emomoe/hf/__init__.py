"""Hugging Face interop: read HF checkpoints (EMO and its dense baseline, OLMoE, Mixtral) as they
are, import them, and export our models and subsets in the official EMO layout with our own
transformers model files.

- `layouts`: where each of our tensors lives in each HF layout;
- `config_json`: `config.json` <-> our `ModelConfig`;
- `formats`: HF directories as checkpoint formats (registered when `emomoe` is imported);
- `convert`: `import_hf` and `export_hf`;
- `tokenizer_files`: the tokenizer and generation files an export carries;
- `auto`: our `EmoConfig` / `EmoForCausalLM` registered with transformers' Auto classes;
- `remote/`: those model files, shipped into every export (they need only torch and transformers).
"""
