from emomoe.analyze.pieces import document_pieces, token_label
from emomoe.data.tokenizer import train_tokenizer

TEXTS = ["def f(x):\n    return x", "数学定理的证明", "Grüße aus Köln"] * 20


def test_pieces_join_to_the_document_even_across_split_characters():
    tok = train_tokenizer(TEXTS, vocab_size=280)
    for text in ["数学定理的证明 und Grüße", "def g(y):\n\treturn 2"]:
        ids = tok.encode(text)
        pieces = document_pieces(tok, ids)
        assert len(pieces) == len(ids)
        assert "".join(pieces) == text
    # a CJK character is 3 UTF-8 bytes; with a byte-level vocabulary this small some are split
    # over tokens, and the tokens that only start a character add nothing
    ids = tok.encode("证明数学")
    assert len(ids) > 4 and "".join(document_pieces(tok, ids)) == "证明数学"
    assert "" in document_pieces(tok, ids)


def test_token_labels_show_whitespace():
    tok = train_tokenizer(TEXTS, vocab_size=280)
    (space,) = tok.encode(" ")
    (newline,) = tok.encode("\n")
    assert token_label(tok, space) == "␣" and token_label(tok, newline) == "⏎"
    assert token_label(None, 17) == "#17"
    assert document_pieces(None, [3, 4]) == ["#3 ", "#4 "]
