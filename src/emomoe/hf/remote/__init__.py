"""Package data: the transformers model files (`configuration_emo.py`, `modeling_emo.py`) that
`emomoe hf export` writes beside the weights. They import only torch and transformers."""
