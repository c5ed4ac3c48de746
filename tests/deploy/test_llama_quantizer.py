"""llama.cpp's quantizer: without llama-cpp-python, q4_k is one line naming the extra to install
(the quantized files themselves are checked in llama.cpp by test_gguf)."""

import sys

import pytest
from gguf import LlamaFileType

from emomoe.deploy.llama_quantizer import quantize_file
from emomoe.errors import MissingDependency


def test_without_llama_cpp_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(MissingDependency, match=r"^a k-quant GGUF .*pip install 'emomoe\[gguf\]'"):
        quantize_file(tmp_path / "in.gguf", tmp_path / "out.gguf", LlamaFileType.MOSTLY_Q4_K_M)
    assert list(tmp_path.iterdir()) == []
