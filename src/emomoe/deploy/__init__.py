"""Deploying a checkpoint or subset to runtimes other than emomoe: GGUF files for llama.cpp
(`gguf.export_gguf`, its tensor layout in `layout`, the tokenizer in `vocab`, llama.cpp's own
quantizer in `quantize`)."""
