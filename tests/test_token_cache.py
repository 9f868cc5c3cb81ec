"""Corpora at a researcher's scale: integer evaluation indices, the token cache, batches from its memory map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data.prepare import spread

# Past 2**24 windows float32 cannot tell n - 1 from n: this count made torch.linspace(0, n - 1, k) index past the end.
CRASHING_WINDOWS = 98_999_936


def test_the_float_index_that_crashed_is_out_of_bounds():
    """The bug itself, so the test below is known to test something."""
    assert int(torch.linspace(0, CRASHING_WINDOWS - 1, 320).round().long().max()) == CRASHING_WINDOWS


@pytest.mark.parametrize("n", [CRASHING_WINDOWS, 2**24 + 1, 2**31 + 7, 10**11 + 3])
@pytest.mark.parametrize("k", [1, 2, 320, 10_000])
def test_spread_stays_in_bounds_and_hits_both_ends_past_2_24(n, k):
    idx = spread(n, k)
    assert idx.dtype == np.int64 and len(idx) == k
    assert int(idx[0]) == 0 and int(idx.max()) <= n - 1
    if k > 1:
        assert int(idx[-1]) == n - 1
        assert (np.diff(idx) > 0).all()  # strictly increasing: no window twice
        gaps = np.diff(idx)
        assert int(gaps.max()) - int(gaps.min()) <= 1  # evenly spread


def test_spread_small_is_what_linspace_gave():
    """Below 2**24 the evaluation windows of every earlier run stay the same (no float error there for these)."""
    for n, k in [(962, 320), (117, 320), (10, 4), (4647, 640), (1136, 256)]:
        old = torch.linspace(0, n - 1, min(n, k)).round().long().numpy()
        assert np.array_equal(spread(n, k), old)
    assert spread(5, 100).tolist() == [0, 1, 2, 3, 4]
    assert len(spread(0, 3)) == 0


# ----------------------------------------------------------------------------------------------------------- helpers

import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from conftest import child_env, write_spec  # noqa: E402

from harness.data import cache  # noqa: E402
from harness.data.batches import PERM_LIMIT, Batches, eval_batches, feistel, make_batches  # noqa: E402
from harness.data.corpora import CorpusError, load_text  # noqa: E402
from harness.data.prepare import Prepared, _prepare_cached, prepare  # noqa: E402
from harness.data.tokenizers import CharTokenizer, TiktokenTokenizer  # noqa: E402
from harness.spec import DataSpec  # noqa: E402

WHITESPACE_TEXT = "a\n\nb\n \nc\n  d\n\t\te \n\n\n f\r\n\r\ng\rh\u00a0\ni\u3000j\n\u3000k\n!\n?x\n12\n345\n'll\n's\n" * 40


def _spec(corpus, **kw) -> DataSpec:
    return DataSpec.model_validate({"corpus": str(corpus), "seq_len": 8, **kw})


def _fresh(data: DataSpec, **kw) -> Prepared:
    """prepare() as a new process sees it: without this process's own cache of prepared data."""
    _prepare_cached.cache_clear()
    return prepare(data, **kw)


class _Heard:
    """A reporter that keeps what the token cache says."""

    def __init__(self):
        self.events: list = []

    def __enter__(self):
        self._old = cache.set_reporter(self.events.append)
        return self

    def __exit__(self, *exc):
        cache.set_reporter(self._old)

    @property
    def built(self) -> bool:
        return any(isinstance(e, cache.BuildProgress) for e in self.events)

    @property
    def said(self) -> list[str]:
        return [e for e in self.events if isinstance(e, str)]


# ----------------------------------------------------------------------------------------------------------- the file


def test_a_token_file_is_mapped_uint16_for_char_and_describes_itself(tiny_corpus, tiny_text):
    prep = _fresh(_spec(tiny_corpus, val_fraction=0.2))
    assert isinstance(prep.train.base, np.memmap) or isinstance(prep.train, np.memmap)
    assert prep.train.dtype == np.uint16
    tok = prep.tokenizer
    assert tok.decode(np.concatenate([prep.train, prep.val])) == tiny_text
    assert np.array_equal(np.concatenate([prep.train, prep.val]), CharTokenizer.from_text(tiny_text).encode(tiny_text))
    path = Path(prep.path)
    assert path.parent == Path(os.environ["HARNESS_CACHE_DIR"]) and path.name.endswith(".tokens")
    header = cache._read_header(path)
    assert header["dtype"] == "uint16" and header["n_tokens"] == len(tiny_text) == prep.n_train_tokens + prep.n_val_tokens
    assert header["key"] == prep.key and header["size"] == path.stat().st_size
    assert header["parts"]["tokenizer"] == {"kind": "char", "encoding": None, "compact": False}


def test_tiktoken_ids_are_uint32_past_65536_and_uint16_when_compacted(tiny_corpus, tiny_text):
    full = _fresh(_spec(tiny_corpus, tokenizer="tiktoken:cl100k_base"))
    assert full.train.dtype == np.uint32
    assert np.array_equal(np.concatenate([full.train, full.val]), TiktokenTokenizer("cl100k_base").encode(tiny_text))
    compact = _fresh(_spec(tiny_corpus, tokenizer={"kind": "tiktoken", "encoding": "cl100k_base", "compact": True}))
    assert compact.train.dtype == np.uint16 and compact.key != full.key
    ids = np.concatenate([compact.train, compact.val])
    assert set(ids.tolist()) == set(range(compact.tokenizer.vocab_size))
    assert compact.tokenizer.decode(ids) == tiny_text


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_encoding_in_small_pieces_gives_the_ids_of_the_whole_text(tmp_path, monkeypatch, encoding):
    """The pieces are cut where tiktoken's pre-tokenizer would cut anyway: runs of newlines and spaces, CRLF,
    Unicode spaces after a newline all encode as they do in one piece."""
    text = load_text("shakespeare/sonnets")[:20_000] + WHITESPACE_TEXT
    path = tmp_path / "ws.txt"
    path.write_bytes(text.encode("utf-8"))
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    monkeypatch.setattr(cache, "CHUNK_BYTES", 64)
    monkeypatch.setattr(cache, "BATCH_PIECES", 3)
    prep = _fresh(_spec(path, tokenizer=f"tiktoken:{encoding}", val_fraction=0.0))
    assert np.array_equal(np.asarray(prep.train), TiktokenTokenizer(encoding).encode(normalised))
    char = _fresh(_spec(path, val_fraction=0.0))
    assert char.tokenizer.decode(char.train) == normalised


def test_a_second_run_maps_the_file_without_tokenizing(tmp_path, tiny_text):
    corpus = tmp_path / "own.txt"
    corpus.write_text(f"{tmp_path}\n{tiny_text}", encoding="utf-8")  # text no other test has cached this session
    data = _spec(corpus)
    with _Heard() as first:
        a = _fresh(data)
    before = os.stat(a.path)
    with _Heard() as second:
        b = _fresh(data)
    assert first.built and not second.built and not second.said
    after = os.stat(b.path)
    assert b.path == a.path and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert np.array_equal(a.train, b.train) and a.key == b.key


def test_runs_that_differ_in_val_fraction_or_seq_len_share_one_file(tiny_corpus):
    a = _fresh(_spec(tiny_corpus, val_fraction=0.1))
    b = _fresh(_spec(tiny_corpus, val_fraction=0.3, seq_len=16, stride=2))
    assert a.path == b.path and a.n_val_tokens != b.n_val_tokens


@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_a_damaged_file_is_rebuilt_and_said_once(tiny_corpus, damage):
    data = _spec(tiny_corpus)
    good = _fresh(data)
    expected = np.array(good.train)
    path = Path(good.path)
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) - 100], "header": b"garbage" + raw[7:], "empty": b""}[damage])
    with _Heard() as heard:
        again = _fresh(data)
    assert heard.built
    (said,) = heard.said
    assert "damaged" in said and str(path) in said and "rebuilding" in said
    assert np.array_equal(again.train, expected) and path.stat().st_size == len(raw)


def test_a_changed_corpus_gets_a_new_file_never_a_mix(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first version of the text, long enough\n" * 5, encoding="utf-8")
    a = _fresh(_spec(path))
    first = a.tokenizer.decode(np.concatenate([a.train, a.val]))
    path.write_text("second version: other words entirely\n" * 5, encoding="utf-8")
    b = _fresh(_spec(path))
    assert b.key != a.key and b.path != a.path
    assert b.tokenizer.decode(np.concatenate([b.train, b.val])).startswith("second")
    assert first.startswith("first") and Path(a.path).exists()


def test_an_interrupted_build_leaves_nothing_behind(tmp_path):
    """Ctrl-C while the ids are being written (here, as the encoding ends: the temporary file is full-sized)."""
    path = tmp_path / "big.txt"
    path.write_text(f"{tmp_path} some words on a line\n" * 20_000, encoding="utf-8")

    def interrupt(event):
        if isinstance(event, cache.BuildProgress) and event.phase == "encode":
            raise KeyboardInterrupt

    folder = Path(os.environ["HARNESS_CACHE_DIR"])
    before = set(os.listdir(folder)) if folder.is_dir() else set()
    old = cache.set_reporter(interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            _fresh(_spec(path, tokenizer="tiktoken:cl100k_base"))
    finally:
        cache.set_reporter(old)
    left = set(os.listdir(folder)) - before
    assert not [n for n in left if n.endswith(".tokens") or ".tmp" in n], left
    assert _fresh(_spec(path, tokenizer="tiktoken:cl100k_base")).n_train_tokens > 0  # and the next run builds it


# ----------------------------------------------------------------------------------------------------------- processes


_CHILD = """
import sys
from harness.data import cache
from harness.data.prepare import prepare
from harness.spec import DataSpec

def report(event):
    if isinstance(event, str):
        print("said", event, flush=True)
    elif not getattr(report, "once", False):
        report.once = True
        print("building", flush=True)
        if sys.argv[2] == "pause":
            sys.stdin.readline()  # hold the lock, mid-build, until the test says go

cache.set_reporter(report)
prep = prepare(DataSpec.model_validate({"corpus": sys.argv[1], "seq_len": 8}))
print("done", prep.path, int(prep.n_train_tokens), getattr(report, "once", False), flush=True)
"""


def _child(corpus: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(corpus), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=child_env())


def test_one_process_builds_while_another_waits_then_maps_it(tmp_path):
    corpus = tmp_path / "shared.txt"
    corpus.write_text("the same text for both processes\n" * 2000, encoding="utf-8")
    builder = _child(corpus, "pause")
    assert builder.stdout.readline().strip() == "building"  # it holds the lock now
    waiter = _child(corpus, "go")
    line = waiter.stdout.readline()
    assert line.startswith("said waiting for another process to finish tokenizing"), line
    builder.stdin.write("\n")
    builder.stdin.flush()
    b_out, _ = builder.communicate(timeout=60)
    w_out, _ = waiter.communicate(timeout=60)
    assert builder.returncode == waiter.returncode == 0
    _, b_path, b_n, b_built = b_out.split()
    _, w_path, w_n, w_built = w_out.split()
    assert (b_path, b_n) == (w_path, w_n) and b_built == "True" and w_built == "False"  # built once, mapped twice


def test_a_full_disk_stops_the_run_and_leaves_no_partial_file(tmp_path, tiny_spec_dict):
    """A real write failure: the child may write at most 256 KiB per file (RLIMIT_FSIZE), the token file needs 2 MB."""
    corpus = tmp_path / "big.txt"
    corpus.write_text("x" * 1_000_000 + "\n", encoding="utf-8")
    tiny_spec_dict["data"]["corpus"] = str(corpus)
    spec = write_spec(tmp_path, tiny_spec_dict)
    folder = Path(os.environ["HARNESS_CACHE_DIR"])
    before = set(folder.iterdir()) if folder.is_dir() else set()
    limit = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024)); "
             "from harness.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", limit, "prepare", str(spec)], capture_output=True, text=True, env=child_env())
    assert r.returncode == 2, r.stderr
    assert "cannot write the token cache" in r.stderr and "HARNESS_CACHE_DIR" in r.stderr
    assert not [p for p in set(folder.iterdir()) - before if p.name.endswith(".tokens") or ".tmp" in p.name]


# ----------------------------------------------------------------------------------------------------------- corpora


def test_a_folder_a_glob_and_gz_files_are_one_corpus_in_path_order(tmp_path):
    folder = tmp_path / "books"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha text\n", encoding="utf-8")
    (folder / "b" / "c.txt.gz").write_bytes(gzip.compress("gamma, compressed".encode()))  # no final newline: one is added
    (folder / "b" / "b.txt").write_text("beta text\n", encoding="utf-8")
    (folder / "notes.md").write_text("not part of it\n", encoding="utf-8")
    prep = _fresh(_spec(folder, val_fraction=0.0, seq_len=2))
    assert prep.tokenizer.decode(prep.train) == "alpha text\nbeta text\ngamma, compressed"
    globbed = _fresh(_spec(str(folder / "**" / "*.txt"), val_fraction=0.0, seq_len=2))
    assert globbed.tokenizer.decode(globbed.train) == "alpha text\nbeta text\n"


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "has no .txt or .txt.gz files"),
    (lambda p: None, "no file matches"),
    (lambda p: p.write_bytes(b"not gzip at all"), "not a readable gzip file"),
])
def test_bad_corpora_are_clear_errors(tmp_path, make, message):
    target = tmp_path / ("empty_folder" if "folder" in message or "has no" in message else "x.txt.gz")
    make(target)
    corpus = target if "no file matches" not in message else tmp_path / "nothing" / "*.txt"
    with pytest.raises(CorpusError, match=message) as exc_info:
        _fresh(_spec(corpus))
    assert exc_info.value.path == "data.corpus"


def test_a_non_utf8_byte_deep_in_a_large_file_is_named_by_its_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_BYTES", 1000)
    path = tmp_path / "late.txt"
    good = ("a fine line of text\n" * 500).encode()
    path.write_bytes(good + b"caf\xe9\n")
    with pytest.raises(CorpusError, match=f"not UTF-8 .* at byte {len(good) + 3}.*late.txt"):
        _fresh(_spec(path))
    assert not list(Path(os.environ["HARNESS_CACHE_DIR"]).glob("*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_a_clear_error(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("text\n", encoding="utf-8")
    path.chmod(0)
    with pytest.raises(CorpusError, match="cannot read corpus file .*secret.txt"):
        _fresh(_spec(path))


# ----------------------------------------------------------------------------------------------------------- batches


def test_eval_batches_past_2_24_windows_stay_in_bounds():
    """A corpus of ~99 M windows, as a zero-stride view (no memory): the evaluation windows end at the last one."""
    n_windows, seq_len = CRASHING_WINDOWS, 8
    tokens = np.broadcast_to(np.uint16(3), (n_windows + seq_len,))
    prep = Prepared(CharTokenizer(list("abcd")), len(tokens), tokens, tokens[:0], len(tokens), 0, n_windows, 0)
    data = DataSpec.model_validate({"corpus": "x", "seq_len": seq_len, "val_fraction": 0.0})
    batches = eval_batches(prep, data, split="train", batch_size=32, n_batches=10)
    assert len(batches) == 10 and all(x.shape == (32, seq_len) for x, _ in batches)
    b = make_batches(prep, data, batch_size=32, seed=0)
    assert b.n_examples == n_windows > PERM_LIMIT and b.next()[0].shape == (32, seq_len)  # Feistel: no 99 M permutation


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 17, 100, 257, 1000, 4097])
def test_feistel_is_a_permutation(n):
    out = feistel(np.arange(n), n, key=1234)
    assert sorted(out.tolist()) == list(range(n))
    if n > 16:
        assert out.tolist() != list(range(n))
        assert not np.array_equal(feistel(np.arange(n), n, key=1235), out)


def _arange_batches(n_windows: int, **kw) -> Batches:
    return Batches(np.arange(n_windows + 8, dtype=np.uint32), seq_len=8, stride=1, batch_size=4, mode="epoch", **kw)


def test_windows_past_the_permutation_limit_cover_each_window_once_and_resume_exactly(monkeypatch):
    import harness.data.batches as batches_module

    monkeypatch.setattr(batches_module, "PERM_LIMIT", 10)  # the large-corpus order, on a corpus small enough to check
    ref = _arange_batches(41, seed=5)
    epoch = [ref.next()[0][:, 0] for _ in range(ref.steps_per_epoch)]
    starts = torch.cat(epoch).tolist()
    assert len(set(starts)) == len(starts) == 40 and set(starts) <= set(range(41)) and starts != sorted(starts)
    stream = [ref.next() for _ in range(15)]  # crosses into a third epoch
    run = _arange_batches(41, seed=5)
    for _ in range(10 + 7):
        run.next()
    state = run.state_dict()
    assert all(type(v) is int for v in state.values()) and set(state) == {"epoch", "cursor", "step"}
    fresh = _arange_batches(41, seed=5)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    for (xa, ya), (xb, yb) in zip(stream[7:], (fresh.next() for _ in range(8))):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


# ----------------------------------------------------------------------------------------------------------- documents

STORIES = "Once upon a time.\nThe end.<|endoftext|>A second story\n\nwith a gap.<|endoftext|>  <|endoftext|>Third.<|endoftext|>"


@pytest.mark.parametrize("compact", [False, True])
def test_tiktoken_documents_are_separated_by_endoftext(tmp_path, monkeypatch, compact):
    path = tmp_path / "stories.txt"
    path.write_text(STORIES * 3, encoding="utf-8")
    monkeypatch.setattr(cache, "CHUNK_BYTES", 16)  # documents and delimiters straddle the pieces
    data = _spec(path, sampling="documents", packing="pack", delimiter="<|endoftext|>", val_fraction=0.0,
                 tokenizer={"kind": "tiktoken", "encoding": "cl100k_base", "compact": compact})
    prep = _fresh(data)
    tok = prep.tokenizer
    plain = TiktokenTokenizer("cl100k_base")
    docs = [d for d in (STORIES * 3).split("<|endoftext|>") if d.strip()]
    assert len(docs) == 9
    eot = tok.bos_id
    assert eot is not None and (compact or eot == plain._enc.eot_token == 100257)
    expected = [eot]
    for d in docs:
        expected += [int(i) for i in tok.encode(d)] + [eot]
    assert np.asarray(prep.train).tolist() == expected
    assert tok.decode([eot]) == "<|endoftext|>"
    again = _fresh(data).tokenizer  # from the file's saved tokenizer: the separator survives
    assert again.bos_id == eot


def test_paragraph_documents_span_pieces_and_files_end_them(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "1.txt").write_text("first para\nstill first\n\nsecond para\n\n\n", encoding="utf-8")
    (folder / "2.txt").write_text("third, in its own file", encoding="utf-8")
    monkeypatch.setattr(cache, "CHUNK_BYTES", 8)
    prep = _fresh(_spec(folder, sampling="documents", delimiter="\n\n", val_fraction=0.0, seq_len=32))
    tok = prep.tokenizer
    rows = [tok.decode([i for i in row if i >= 0]) for row in prep.train.tolist()]
    assert rows == ["first para\nstill first", "second para", "\nthird, in its own file"[1:]]


def test_a_delimiter_without_documents_sampling_is_a_spec_error(tmp_path, tiny_spec_dict):
    from harness import SpecError
    from harness.spec import spec_from_dict

    tiny_spec_dict["data"]["delimiter"] = "<|endoftext|>"
    with pytest.raises(SpecError) as exc_info:
        spec_from_dict(tiny_spec_dict)
    assert any(i.path == "data.delimiter" and "documents" in i.message for i in exc_info.value.issues)


def test_a_relative_glob_in_a_spec_is_read_next_to_the_spec(tmp_path, tiny_spec_dict, tiny_text):
    from harness import load_spec

    project = tmp_path / "project"
    (project / "texts").mkdir(parents=True)
    (project / "texts" / "one.txt").write_text(tiny_text, encoding="utf-8")
    tiny_spec_dict["data"]["corpus"] = "texts/*.txt"
    spec = load_spec(write_spec(project, tiny_spec_dict))  # the working directory is tmp_path, not project
    assert spec.data.corpus == str(project / "texts" / "*.txt")
    assert _fresh(spec.data).n_chars == len(tiny_text)


def test_a_cache_folder_others_can_write_to_is_refused(tmp_path, monkeypatch, tiny_corpus):
    shared = tmp_path / "shared-cache"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(shared))
    with pytest.raises(CorpusError, match="refusing to keep the token cache in .*other users can write to it") as exc_info:
        _fresh(_spec(tiny_corpus))
    assert "HARNESS_CACHE_DIR" in str(exc_info.value) and not list(shared.iterdir())
    fresh = tmp_path / "mine" / "cache"
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(fresh))
    _fresh(_spec(tiny_corpus))
    assert oct(fresh.stat().st_mode & 0o777) == oct(0o700)


def test_cache_list_and_clear_on_the_command_line(tmp_path, monkeypatch, tiny_spec_dict, capsys):
    from harness.cli import main

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cli-cache"))
    spec = write_spec(tmp_path, tiny_spec_dict)
    _prepare_cached.cache_clear()
    assert main(["prepare", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "tokens (" in out and "token file " + str(tmp_path / "cli-cache") in out
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "1 file" in listed and "uint16" in listed and "char" in listed and str(tiny_spec_dict["data"]["corpus"]) in listed
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not list((tmp_path / "cli-cache").glob("*.tokens"))
    assert main(["cache", "list"]) == 0 and "0 files" in capsys.readouterr().out


def test_prepare_refuses_a_task_without_a_corpus(tmp_path, capsys):
    from harness.cli import main

    spec = write_spec(tmp_path, {"name": "cls", "task": {"kind": "classify", "dataset": "names_by_sex"},
                                 "data": {"seq_len": 16}, "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "d_ff": 32},
                                 "train": {"max_steps": 1, "batch_size": 4, "optimizer": {"lr": 1e-3}}})
    code = main(["prepare", str(spec)])
    err = capsys.readouterr().err
    assert code == 2 and "task: lm" in err, err


def test_padded_documents_are_made_a_batch_at_a_time(tmp_path):
    """documents + pad: the rows are gathered from the token file for the batch alone, the same as padding them all."""
    path = tmp_path / "lines.txt"
    lines = [f"line {i} " + "x" * (i % 13) for i in range(200)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prep = _fresh(_spec(path, sampling="documents", seq_len=10, val_fraction=0.1))
    rows = prep.train
    assert rows.shape == (180, 11) and not isinstance(rows, np.ndarray)
    tok = prep.tokenizer
    every = np.asarray(rows)
    for i in (0, 7, 179):
        doc = [tok.bos_id, *tok.encode(lines[i]).tolist(), tok.bos_id][:11]
        assert every[i].tolist() == doc + [-1] * (11 - len(doc))
    assert np.array_equal(rows[np.array([179, 3, 3])], every[[179, 3, 3]])
    assert prep.truncated_documents == sum(len(ln) + 2 > 11 for ln in lines)


def test_a_build_shows_plain_lines_off_a_terminal(capsys):
    from harness.cli.tokens import _BuildLines

    lines = _BuildLines()
    lines(cache.BuildProgress("big.txt", "encode", 1_000_000, 4_000_000, 0.5))  # under a second: nothing yet
    lines(cache.BuildProgress("big.txt", "encode", 2_000_000, 4_000_000, 1.0))
    lines(cache.BuildProgress("big.txt", "encode", 2_500_000, 4_000_000, 1.2))  # within 10 s of the last line
    lines(cache.BuildProgress("big.txt", "encode", 4_000_000, 4_000_000, 2.0, final=True))
    lines("the token cache x was damaged; rebuilding it")
    err = capsys.readouterr().err.splitlines()
    assert err == ["tokenizing big.txt: encode  50% 2 MB, 2.0 MB/s, 1 s left",
                   "tokenizing big.txt: encode 100% 4 MB, 2.0 MB/s",
                   "the token cache x was damaged; rebuilding it"]
