import pytest
from hypothesis import given

from emomoe.data.prompts import read_prompts
from emomoe.errors import DataError
from tests.fixtures import damaged, fuzz_settings, only_our_errors


def test_text_files_hold_one_prompt_per_line_and_jsonl_a_prompt_field(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second, indented\n")
    assert read_prompts(txt) == ["first prompt", "  second, indented"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a\\nb"}\n"plain"\n{"text": "t", "id": 3}\n')
    assert read_prompts(jsonl) == ["a\nb", "plain", "t"]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("bad.jsonl", '{"prompt": 1}\n', r"bad.jsonl:1: expected a JSON string or an object"),
        ("bad.jsonl", '"ok"\n{oops\n', r"bad.jsonl:2: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)$"),
        ("empty.txt", "\n \n", r"empty.txt: holds no prompt"),
    ],
)
def test_bad_prompt_files_name_the_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        read_prompts(tmp_path / name)
    with pytest.raises(DataError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_a_folder_or_binary_file_of_prompts_is_named_as_input(tmp_path):
    with pytest.raises(DataError, match=r": is a folder; expected a prompt file$"):
        read_prompts(tmp_path)
    (tmp_path / "p.txt").write_bytes(b"\xff\xd8\xff\xe0 a JPEG")
    with pytest.raises(DataError, match=r"p\.txt: not a prompt file: byte 0 is not UTF-8 text"):
        read_prompts(tmp_path / "p.txt")


@pytest.mark.parametrize("name", ["p.jsonl", "p.txt"])
def test_fuzz_a_damaged_prompt_file_raises_only_our_errors(tmp_path, name):
    valid = '{"prompt": "def f(x):"}\n"plain"\n{"text": "über", "id": 3}\n'.encode()

    @fuzz_settings()
    @given(damaged(valid))
    def read(data):
        (tmp_path / name).write_bytes(data)
        only_our_errors(read_prompts, tmp_path / name)

    read()
