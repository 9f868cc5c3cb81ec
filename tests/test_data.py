"""Corpora, tokenizers, splits and batch samplers."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import SpecError, load_spec
from harness.data.batches import Batches, eval_batches, make_batches
from harness.data.corpora import CorpusError, list_corpora, load_text
from harness.data.prepare import prepare
from harness.data.tokenizers import CharTokenizer, TiktokenTokenizer, tokenizer_from_dict
from harness.errors import HarnessError
from harness.spec import DataSpec, TokenizerSpec

UNICODE_TEXT = "Héllo, wörld! Ça va? 🚀 naïve café — “quoted” ∑x² 日本語\n\ttab and\r\nCRLF"


def _data_spec(corpus: Path | str, **kw) -> DataSpec:
    return DataSpec.model_validate({"corpus": str(corpus), **kw})


def _drain(b: Batches, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [b.next() for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------- char tokenizer


def test_char_tokenizer_round_trip(tiny_text):
    tok = CharTokenizer.from_text(tiny_text)
    ids = tok.encode(tiny_text)
    assert ids.dtype == np.int64 and len(ids) == len(tiny_text)
    assert tok.decode(ids) == tiny_text
    assert tok.vocab_size == len(set(tiny_text))
    assert tok.chars == sorted(set(tiny_text))  # ids sorted by code point
    assert set(ids.tolist()) == set(range(tok.vocab_size))  # dense
    assert tok.bos_id is None


def test_char_tokenizer_unicode_and_saved_form():
    tok = CharTokenizer.from_text(UNICODE_TEXT, bos=True)
    assert tok.decode(tok.encode(UNICODE_TEXT)) == UNICODE_TEXT
    assert tok.bos_id == tok.vocab_size - 1 == len(set(UNICODE_TEXT))
    # BOS is dropped when decoding
    ids = np.concatenate([[tok.bos_id], tok.encode("café"), [tok.bos_id]])
    assert tok.decode(ids) == "café"
    again = tokenizer_from_dict(tok.to_dict())
    assert again.vocab_size == tok.vocab_size and again.bos_id == tok.bos_id
    assert np.array_equal(again.encode(UNICODE_TEXT), tok.encode(UNICODE_TEXT))


def test_char_tokenizer_rejects_unknown_characters():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(HarnessError, match="outside the vocabulary"):
        tok.encode("abz")


# ----------------------------------------------------------------------------------------------------------- tiktoken


@pytest.mark.parametrize(
    ("encoding", "hello_world"), [("cl100k_base", [15339, 1917]), ("o200k_base", [24912, 2375])]
)
def test_tiktoken_round_trip_offline(encoding, hello_world, tiny_text):
    tok = TiktokenTokenizer(encoding)
    assert tok.encode("hello world").tolist() == hello_world  # the real BPE ranks, not a stand-in
    for text in (tiny_text, UNICODE_TEXT):
        ids = tok.encode(text)
        assert len(ids) < len(text)  # BPE merges
        assert tok.decode(ids) == text
    assert tok.vocab_size > 100_000
    assert int(tok.encode(tiny_text).max()) < tok.vocab_size


def test_tiktoken_compact_remap(tiny_text):
    spec = TokenizerSpec.model_validate({"kind": "tiktoken", "encoding": "cl100k_base", "compact": True})
    tok = TiktokenTokenizer.for_corpus(spec, tiny_text)
    full = TiktokenTokenizer("cl100k_base")
    orig = full.encode(tiny_text)
    ids = tok.encode(tiny_text)
    assert tok.vocab_size == len(np.unique(orig)) < 1000
    assert set(ids.tolist()) == set(range(tok.vocab_size))  # dense 0..n-1, every id used
    assert tok.remap == sorted(tok.remap)
    assert np.array_equal(np.asarray(tok.remap)[ids], orig)  # remap[i] is what dense id i stands for
    assert tok.decode(ids) == tiny_text
    again = tokenizer_from_dict(tok.to_dict())
    assert np.array_equal(again.encode(tiny_text), ids) and again.decode(ids) == tiny_text
    with pytest.raises(HarnessError, match="outside the compacted vocabulary"):
        tok.encode("Zyzzyva quixotically xylophones")


def test_tiktoken_prepare_through_spec(tiny_corpus, tiny_text):
    prep = prepare(_data_spec(tiny_corpus, tokenizer="tiktoken:o200k_base", seq_len=8, val_fraction=0.2))
    assert prep.tokenizer.kind == "tiktoken"
    assert prep.tokenizer.decode(np.concatenate([prep.train, prep.val])) == tiny_text


@pytest.fixture
def no_download(monkeypatch):
    """Refusing an encoding that is not shipped must not try to get it: no ranks are read and no connection is made."""
    import socket

    import harness.data.tokenizers as tokenizers

    def refuse(*a, **k):  # pragma: no cover - reached only if the refusal came too late
        raise AssertionError("tried to load BPE ranks or to open a connection")

    monkeypatch.setattr(tokenizers, "_published", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_gpt2_encoding_is_refused_offline(no_download):
    with pytest.raises(CorpusError) as exc_info:
        TiktokenTokenizer("gpt2")
    assert "offline" in str(exc_info.value)
    assert "cl100k_base" in str(exc_info.value) and "o200k_base" in str(exc_info.value)
    assert exc_info.value.path == "data.tokenizer.encoding"


def test_gpt2_encoding_in_spec_is_an_issue(tmp_path, tiny_spec_dict, write_spec, no_download):
    tiny_spec_dict["data"]["tokenizer"] = "tiktoken:gpt2"
    with pytest.raises(SpecError) as exc_info:
        load_spec(write_spec(tmp_path, tiny_spec_dict))
    (issue,) = exc_info.value.issues
    assert issue.path == "data.tokenizer.encoding"
    assert "offline" in issue.message


# ----------------------------------------------------------------------------------------------------------- windows sampler


def _stream_batches(n_windows: int, *, batch_size: int, seq_len: int = 8, stride: int = 1, seed: int = 0, mode: str = "epoch") -> Batches:
    """Batches over torch.arange: x[:, 0] is the window's start, so positions are visible in the batch itself."""
    n_tokens = (n_windows - 1) * stride + seq_len + 1
    return Batches(torch.arange(n_tokens), seq_len=seq_len, stride=stride, batch_size=batch_size, seed=seed, mode=mode)


def test_windows_each_exactly_once_per_epoch_and_shuffled():
    b = _stream_batches(32, batch_size=4, stride=3)
    assert b.n_examples == 32 and b.steps_per_epoch == 8
    order = []
    for _ in range(8):
        x, y = b.next()
        assert x.shape == y.shape == (4, 8)
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)  # y is x shifted by one
        order += x[:, 0].tolist()
    assert sorted(order) == [3 * i for i in range(32)]  # every window once
    assert order != sorted(order)  # shuffled
    assert b.epoch == 1 and b.cursor == 0 and b.at_epoch_start


def test_windows_drop_last_and_epochs_differ():
    b = _stream_batches(34, batch_size=4)  # 8 full batches, 2 windows left over each epoch
    assert b.steps_per_epoch == 8
    epochs = []
    for _ in range(3):
        starts = torch.cat([b.next()[0][:, 0] for _ in range(8)]).tolist()
        assert len(starts) == len(set(starts)) == 32  # no window twice, the remainder is dropped
        assert set(starts) <= set(range(34))
        epochs.append(starts)
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != epochs[2]
    assert b.epoch == 3


def test_windows_no_val_leak(tmp_path):
    """Train batches only hold tokens of the train part, right up to (never across) the split point."""
    train_text = ("the quick brown fox jumps over the lazy dog " * 10)[:400]
    val_text = ("0123456789" * 10)[:100]
    path = tmp_path / "split.txt"
    path.write_text(train_text + val_text, encoding="utf-8")
    data = _data_spec(path, seq_len=16, val_fraction=0.2, sampling="windows")
    prep = prepare(data)
    tok = prep.tokenizer
    assert tok.decode(prep.train) == train_text and tok.decode(prep.val) == val_text
    digits = {int(i) for i in tok.encode(string.digits)}
    b = make_batches(prep, data, batch_size=4, seed=1)
    assert b.n_examples == prep.train_examples == 400 - 16
    seen_targets: list[int] = []
    for _ in range(b.steps_per_epoch):
        x, y = b.next()
        assert not digits & set(x.flatten().tolist())
        assert not digits & set(y.flatten().tolist())
        seen_targets += y[:, -1].tolist()
    # the last window ends exactly at the last train token (the split is used fully, no off-by-one)
    assert int(b.starts.max()) + 16 + 1 == len(prep.train)
    # validation batches come from the val part only
    for x, y in eval_batches(prep, data, split="val", batch_size=4, n_batches=3):
        assert set(x.flatten().tolist()) | set(y.flatten().tolist()) <= digits


def test_random_sampler_reproducible_for_a_seed():
    a = _drain(_stream_batches(50, batch_size=4, seed=7, mode="random"), 5)
    b = _drain(_stream_batches(50, batch_size=4, seed=7, mode="random"), 5)
    c = _drain(_stream_batches(50, batch_size=4, seed=8, mode="random"), 5)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    starts = torch.cat([x[:, 0] for x, _ in a])
    assert int(starts.min()) >= 0 and int(starts.max()) < 50


def test_epoch_sampler_reproducible_for_a_seed(tiny_corpus):
    data = _data_spec(tiny_corpus, seq_len=16, val_fraction=0.2)
    prep = prepare(data)
    a = _drain(make_batches(prep, data, batch_size=4, seed=3), 4)
    b = _drain(make_batches(prep, data, batch_size=4, seed=3), 4)
    c = _drain(make_batches(prep, data, batch_size=4, seed=4), 4)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


@pytest.mark.parametrize("mode", ["epoch", "random"])
@pytest.mark.parametrize("split_at", [0, 2, 3, 7])
def test_sampler_state_replays_identical_stream(mode, split_at):
    # 13 windows, batch 4: 3 steps per epoch, so the replay crosses epoch boundaries
    ref = _stream_batches(13, batch_size=4, seed=11, mode=mode)
    stream = _drain(ref, 10)
    run = _stream_batches(13, batch_size=4, seed=11, mode=mode)
    _drain(run, split_at)
    state = run.state_dict()
    assert set(state) == {"epoch", "cursor", "step"}
    assert all(type(v) is int for v in state.values())  # plain ints: safe for weights_only checkpoints
    fresh = _stream_batches(13, batch_size=4, seed=11, mode=mode)
    fresh.load_state_dict(state)
    replay = _drain(fresh, 10 - split_at)
    for (xa, ya), (xb, yb) in zip(stream[split_at:], replay):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert fresh.state_dict() == ref.state_dict()


def test_eval_batches_fixed_and_spread(tiny_corpus):
    data = _data_spec(tiny_corpus, seq_len=16, val_fraction=0.2)
    prep = prepare(data)
    a = eval_batches(prep, data, split="val", batch_size=4, n_batches=3)
    b = eval_batches(prep, data, split="val", batch_size=4, n_batches=3)
    assert len(a) == 3 and all(x.shape == (4, 16) for x, _ in a)
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, b))
    # capped at the windows available
    many = eval_batches(prep, data, split="val", batch_size=4, n_batches=10_000)
    assert sum(len(x) for x, _ in many) == prep.val_examples


# ----------------------------------------------------------------------------------------------------------- documents


NAMES_TEXT = "ann\nbob\ncarol\n\ndave\neve\nfrank\ngrace\nheidi\nivan\njudy\nmallory\nbartholomew\noscar\npeggy\n"


def test_documents_wrap_lines_in_bos_and_mask_padding(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(NAMES_TEXT, encoding="utf-8")
    data = _data_spec(path, seq_len=8, val_fraction=0.2, sampling="documents")
    prep = prepare(data)
    tok = prep.tokenizer
    bos = tok.bos_id
    assert bos == tok.vocab_size - 1
    lines = [ln for ln in NAMES_TEXT.split("\n") if ln]  # the blank line is not a document
    assert len(lines) == 14
    assert prep.train_examples == 11 and prep.val_examples == 3
    assert prep.truncated_documents == 1  # "bartholomew" + 2 BOS > seq_len + 1
    b = make_batches(prep, data, batch_size=4, seed=0)
    x, y = b.gather(torch.arange(b.n_examples))
    assert x.shape == y.shape == (11, 8)
    for i, line in enumerate(lines[:11]):
        assert int(x[i, 0]) == bos  # every example starts at BOS
        doc = [bos, *tok.encode(line).tolist(), bos][: 8 + 1]
        n = len(doc) - 1  # real targets
        assert y[i, :n].tolist() == doc[1:]
        assert (y[i, n:] == -100).all()  # padding is masked out of the loss
        assert x[i, :n].tolist() == doc[:-1]
        assert (x[i, n:] == bos).all()  # padded inputs are valid ids
        if len(line) + 2 <= 9:
            assert int(y[i, n - 1]) == bos  # the model learns where a name ends
            assert tok.decode(x[i, :n]) == line
    assert int(x.min()) >= 0 and int(x.max()) < tok.vocab_size
    # one epoch of shuffled batches covers each training document once (drop_last)
    seen = torch.cat([b.next()[0] for _ in range(b.steps_per_epoch)])
    assert len({tuple(r) for r in seen.tolist()}) == 8


def test_documents_pack_mode_is_a_bos_separated_stream(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text(NAMES_TEXT, encoding="utf-8")
    data = _data_spec(path, seq_len=8, val_fraction=0.2, sampling="documents", packing="pack")
    prep = prepare(data)
    tok = prep.tokenizer
    lines = [ln for ln in NAMES_TEXT.split("\n") if ln][:11]
    expected = [tok.bos_id]
    for ln in lines:
        expected += tok.encode(ln).tolist() + [tok.bos_id]
    assert prep.train.tolist() == expected
    b = make_batches(prep, data, batch_size=2, seed=0)
    x, y = b.next()
    assert (y != -100).all()


# ----------------------------------------------------------------------------------------------------------- named corpora


def test_named_corpora_load():
    corpora = list_corpora()
    assert "shakespeare/sonnets" in corpora and "names" in corpora
    sonnets = load_text("shakespeare/sonnets")
    assert "From fairest creatures we desire increase" in sonnets
    assert "\r" not in sonnets
    names = load_text("names")
    lines = names.splitlines()
    assert lines[:3] == ["mary", "patricia", "linda"]
    assert len(lines) == len(set(lines)) > 1000
    assert names == names.lower()
    assert load_text("shakespeare/sonnets", max_chars=50) == sonnets[:50]


def test_names_corpus_prepares_as_documents():
    prep = prepare(DataSpec.model_validate({"corpus": "names", "seq_len": 16, "sampling": "documents"}))
    assert prep.train.ndim == 2 and prep.train.shape[1] == 17
    assert prep.train_examples > 1000 and prep.val_examples > 100


@pytest.mark.parametrize(("work", "suggestion"), [("hamlett", "shakespeare/hamlet"), ("sonets", "shakespeare/sonnets")])
def test_unknown_shakespeare_work_suggests(work, suggestion):
    with pytest.raises(CorpusError) as exc_info:
        load_text(f"shakespeare/{work}")
    msg = str(exc_info.value)
    assert f"unknown Shakespeare work '{work}'" in msg
    assert "did you mean" in msg and suggestion in msg


# ----------------------------------------------------------------------------------------------------------- bad corpus files


def test_missing_corpus_file(tmp_path):
    with pytest.raises(CorpusError, match="corpus file not found") as exc_info:
        load_text(str(tmp_path / "absent.txt"))
    assert "absent.txt" in str(exc_info.value)
    assert exc_info.value.path == "data.corpus"


def test_corpus_is_a_directory(tmp_path):
    with pytest.raises(CorpusError, match="directory"):
        load_text(str(tmp_path))


@pytest.mark.parametrize("content", [b"", b"   \n\n\t \n"])
def test_empty_corpus_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="is empty") as exc_info:
        load_text(str(path))
    assert "empty.txt" in str(exc_info.value)


def test_binary_corpus_file(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"GIF89a\x00\x01\x02\x03" * 10)
    with pytest.raises(CorpusError, match="binary") as exc_info:
        load_text(str(path))
    assert "blob.bin" in str(exc_info.value)


def test_non_utf8_corpus_file(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 5)
    with pytest.raises(CorpusError, match="not UTF-8") as exc_info:
        load_text(str(path))
    assert "latin1.txt" in str(exc_info.value) and "byte 3" in str(exc_info.value)


def test_bad_corpus_reported_as_spec_issue(tmp_path, tiny_spec_dict, write_spec):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00\xff" * 100)
    tiny_spec_dict["data"]["corpus"] = str(path)
    with pytest.raises(SpecError) as exc_info:
        load_spec(write_spec(tmp_path, tiny_spec_dict))
    (issue,) = exc_info.value.issues
    assert issue.path == "data.corpus" and "binary" in issue.message


def test_crlf_is_normalised(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n")
    assert load_text(str(path)) == "one\ntwo\nthree\n"


def test_edited_corpus_file_is_reread(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first version of the text\n", encoding="utf-8")
    assert load_text(str(path)).startswith("first")
    path.write_text("second, longer version of the text\n", encoding="utf-8")
    assert load_text(str(path)).startswith("second")
