"""Tasks: built-in generators, file parsing and its errors, tokenizers and their cache."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch

from evaluators.tasks import BUILTIN_TASKS, load_task, read_examples
from evaluators.tokenize import PAD_ID, cached_wordpiece, load_tokenizer, train_wordpiece, word_level
from nas.errors import DataError

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))


# --- built-in tasks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_is_deterministic_per_seed(name: str) -> None:
    a = load_task(f"builtin:{name}", seed=1, n_train=300, n_dev=60)
    b = load_task(f"builtin:{name}", seed=1, n_train=300, n_dev=60)
    c = load_task(f"builtin:{name}", seed=2, n_train=300, n_dev=60)
    assert a.train_texts == b.train_texts and a.train_labels == b.train_labels
    assert a.dev_texts == b.dev_texts and torch.equal(a.train_ids, b.train_ids)
    assert a.train_texts != c.train_texts
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_shapes_labels_and_speed(name: str) -> None:
    t0 = time.perf_counter()
    task = load_task(f"builtin:{name}")
    assert time.perf_counter() - t0 < 5.0  # < 1 s on an idle machine; slack for loaded CI
    assert task.num_labels == 2 and set(task.train_labels) == {0, 1}
    assert task.train_ids.shape == (task.n_train, 64) and task.train_ids.dtype == torch.long
    assert torch.all(task.train_ids[:, 0] == task.tokenizer.backend.token_to_id("[CLS]"))
    assert 0.4 < sum(task.train_labels) / task.n_train < 0.6
    assert 0.4 < task.chance_accuracy < 0.6
    assert torch.all((task.train_ids == PAD_ID) == (task.train_mask == 0))


#: sha256 (16 hex) of [texts, labels] of train and dev, seed 1, 300/60 examples, as generated before the
#: test split existed: adding the test stream must not change them (dev accuracies stay comparable).
_BEFORE_TEST_SPLIT = {
    "longmatch": ("0c9ea8a78e25825d", "2379f2f5ca1e7eaf"),
    "sentiment": ("9f918ddfb657e7e1", "ef77c3310a5a4a5c"),
}


def _digest(texts: tuple[str, ...], labels: tuple[int, ...]) -> str:
    return hashlib.sha256(json.dumps([list(texts), list(labels)]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_test_split_is_its_own_stream_and_leaves_train_dev_unchanged(name: str) -> None:
    a = load_task(f"builtin:{name}", seed=1, n_train=300, n_dev=60)
    assert (_digest(a.train_texts, a.train_labels), _digest(a.dev_texts, a.dev_labels)) == _BEFORE_TEST_SPLIT[name]
    assert a.n_test == a.n_dev == 60  # default: as many as dev
    assert a.test_ids.shape == (60, 64) and a.test_mask.shape == (60, 64) and a.test_y.tolist() == list(a.test_labels)
    assert 0.35 < sum(a.test_labels) / a.n_test < 0.65
    again = load_task(f"builtin:{name}", seed=1, n_train=300, n_dev=60)
    assert again.test_texts == a.test_texts and again.test_labels == a.test_labels  # deterministic
    assert load_task(f"builtin:{name}", seed=2, n_train=300, n_dev=60).test_texts != a.test_texts
    # a stream of its own: no example shared with train or dev, and its size moves neither
    assert not set(a.test_texts) & (set(a.train_texts) | set(a.dev_texts))
    bigger = load_task(f"builtin:{name}", seed=1, n_train=300, n_dev=60, n_test=90)
    assert bigger.n_test == 90 and bigger.dev_texts == a.dev_texts and bigger.train_texts == a.train_texts
    assert bigger.chance_accuracy == a.chance_accuracy  # the majority rate is the dev split's
    assert bigger.fingerprint != a.fingerprint
    with pytest.raises(DataError, match="n_test >= 2"):
        load_task(f"builtin:{name}", n_train=10, n_dev=10, n_test=1)


def test_with_tokenizer_re_encodes_every_split() -> None:
    task = load_task("builtin:sentiment", n_train=40, n_dev=10, n_test=12, max_len=32)
    other = train_wordpiece(list(task.train_texts), vocab_size=60)
    again = task.with_tokenizer(other, max_len=16)
    assert again.test_texts == task.test_texts and again.test_labels == task.test_labels
    assert again.test_ids.shape == (12, 16) and torch.equal(again.test_ids, other.encode(list(task.test_texts), 16)[0])
    assert again.n_dev == 10 and again.chance_accuracy == task.chance_accuracy


def test_longmatch_label_is_equality_of_the_ends() -> None:
    task = load_task("builtin:longmatch", n_train=200, n_dev=20)
    for text, label in zip(task.train_texts, task.train_labels, strict=True):
        words = text.split()
        assert int(words[0] == words[-1]) == label
        assert words[0].startswith("k") and words[-1].startswith("k")


def test_sentiment_prefix_changes_label_with_negation() -> None:
    task = load_task("builtin:sentiment", n_train=2000, n_dev=20)
    negated = [t for t in task.train_texts if any(f"{n} {p}" in t for n in ("not", "never") for p in
                                                  ("good", "bad"))]
    assert negated, "negated polar words must occur"


def test_unknown_builtin_names_the_choices() -> None:
    with pytest.raises(DataError, match="builtin:longmatch"):
        load_task("builtin:nope")


# --- file tasks ---------------------------------------------------------------------------------------


def _write(p: Path, text: str) -> Path:
    p.write_text(text, encoding="utf-8")
    return p


def test_folder_with_tsv_train_and_dev(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "text\tlabel\n" + "".join(f"good film {i}\t1\nbad film {i}\t0\n"
                                                            for i in range(20)))
    _write(tmp_path / "dev.tsv", "text\tlabel\na good one\t1\na bad one\t0\nfine\t1\nawful\t0\n")
    task = load_task(str(tmp_path), max_len=16, vocab_size=100)
    # no test.tsv: the dev file is split in half; training keeps every row (nothing it could share)
    assert task.n_train == 40 and task.n_dev == 2 and task.n_test == 2 and task.label_names == ("0", "1")
    assert task.train_ids.shape == (40, 16) and task.test_ids.shape == (2, 16)
    dev_rows = {"a good one", "a bad one", "fine", "awful"}
    assert set(task.dev_texts) | set(task.test_texts) == dev_rows and not set(task.dev_texts) & set(task.test_texts)
    again = load_task(str(tmp_path), max_len=16, vocab_size=100, seed=7)
    assert again.test_texts == task.test_texts  # the same split for every seed


def test_csv_jsonl_and_string_labels_sorted(tmp_path: Path) -> None:
    _write(tmp_path / "train.csv", 'id,label,text\n1,pos,"great, really"\n2,neg,awful\n3,neu,ok\n4,pos,fine\n')
    _write(tmp_path / "dev.jsonl", '{"text": "great", "label": "pos"}\n\n{"text": "meh", "label": "neu"}\n')
    _write(tmp_path / "test.csv", "text,label\nfine indeed,pos\n")
    task = load_task(str(tmp_path), max_len=8, vocab_size=60)
    assert task.label_names == ("neg", "neu", "pos")
    assert task.train_labels == (2, 0, 1, 2) and task.dev_labels == (2, 1) and task.test_labels == (2,)
    assert task.train_texts[0] == "great, really"


def test_integer_labels_sorted_numerically(tmp_path: Path) -> None:
    rows = "".join(json.dumps({"text": f"t {i}", "label": lab}) + "\n" for i, lab in enumerate([10, 2, 2, 10, 1]))
    _write(tmp_path / "train.jsonl", rows)
    _write(tmp_path / "dev.jsonl", '{"text": "x", "label": "2"}\n')
    _write(tmp_path / "test.jsonl", '{"text": "y", "label": 1}\n')
    task = load_task(str(tmp_path), vocab_size=50, max_len=8)
    assert task.label_names == ("1", "2", "10") and task.dev_labels == (1,)


def test_single_file_holds_out_a_fixed_tenth(tmp_path: Path) -> None:
    f = _write(tmp_path / "all.tsv", "text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(100)))
    a = load_task(str(f), seed=0, vocab_size=50, max_len=8)
    b = load_task(str(f), seed=5, vocab_size=50, max_len=8)
    assert a.n_dev == 10 and a.n_test == 10 and a.n_train == 80
    assert a.dev_texts == b.dev_texts and a.test_texts == b.test_texts  # the same for every seed
    # dev is exactly the rows it was before test splits existed, so dev accuracies stay comparable
    assert sorted(int(t.split()[1]) for t in a.dev_texts) == [1, 10, 43, 50, 55, 60, 74, 80, 93, 95]
    train, dev, test = set(a.train_texts), set(a.dev_texts), set(a.test_texts)
    assert not (train & dev or train & test or dev & test)
    assert len(train | dev | test) == 100


def test_folder_with_test_file_uses_it_and_keeps_train(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "text\tlabel\n" + "".join(f"row {i}\t{i % 2}\n" for i in range(30)))
    _write(tmp_path / "dev.tsv", "text\tlabel\ndev a\t0\ndev b\t1\n")
    _write(tmp_path / "test.jsonl", '{"text": "test a", "label": 1}\n{"text": "test b", "label": 0}\n'
           '{"text": "test c", "label": "1"}\n')
    task = load_task(str(tmp_path), vocab_size=50, max_len=8)
    assert (task.n_train, task.n_dev, task.n_test) == (30, 2, 3)
    assert task.test_texts == ("test a", "test b", "test c") and task.test_labels == (1, 0, 1)
    assert torch.equal(task.test_y, torch.tensor([1, 0, 1])) and task.test_mask.shape == (3, 8)
    # train.* and test.* without dev.*: dev is the usual fixed tenth of train
    (tmp_path / "dev.tsv").unlink()
    no_dev = load_task(str(tmp_path), vocab_size=50, max_len=8)
    assert (no_dev.n_train, no_dev.n_dev, no_dev.n_test) == (27, 3, 3)
    assert not set(no_dev.dev_texts) & set(no_dev.train_texts)


def test_folder_without_test_file_splits_the_dev_file(tmp_path: Path) -> None:
    """Test is drawn like dev and shares nothing with training (a split held out of SST-2's train.tsv,
    whose rows are phrases of the same sentences, scored 0.916 where dev scored 0.792)."""
    rows = [f"row {i}" for i in range(200)]
    _write(tmp_path / "train.tsv", "text\tlabel\n" + "".join(f"{r}\t{i % 2}\n" for i, r in enumerate(rows)))
    _write(tmp_path / "dev.tsv", "text\tlabel\n" + "".join(f"dev {i}\t{i % 2}\n" for i in range(8)))
    a = load_task(str(tmp_path), seed=0, vocab_size=50, max_len=8)
    b = load_task(str(tmp_path), seed=3, vocab_size=50, max_len=8)
    assert (a.n_train, a.n_dev, a.n_test) == (200, 4, 4)
    assert a.test_texts == b.test_texts and a.dev_texts == b.dev_texts  # fixed across seeds
    assert a.train_texts == tuple(rows)  # training keeps every row
    assert sorted(a.dev_texts + a.test_texts) == sorted(f"dev {i}" for i in range(8))
    assert a.fingerprint != load_task(str(tmp_path / "train.tsv"), vocab_size=50, max_len=8).fingerprint
    _write(tmp_path / "dev.tsv", "text\tlabel\nonly one\t1\n")
    with pytest.raises(DataError, match="dev.tsv.*at least 2 rows to split into dev and test"):
        load_task(str(tmp_path), vocab_size=50, max_len=8)


def test_unknown_test_label_names_test_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "text\tlabel\na\t0\nb\t1\n")
    _write(tmp_path / "dev.tsv", "text\tlabel\nc\t1\n")
    _write(tmp_path / "test.tsv", "text\tlabel\nc\t1\nd\t9\n")
    with pytest.raises(DataError) as err:
        load_task(str(tmp_path), vocab_size=30)
    msg = str(err.value)
    assert "test.tsv" in msg and "line 3" in msg and "unknown label '9'" in msg


def test_too_small_file_for_dev_and_test_holdout(tmp_path: Path) -> None:
    f = _write(tmp_path / "two.tsv", "text\tlabel\na\t0\nb\t1\n")
    with pytest.raises(DataError, match="needs at least 3 rows to hold out dev and test"):
        load_task(str(f), vocab_size=30)


@pytest.mark.parametrize(
    ("name", "content", "needles"),
    [
        ("train.tsv", "", ["train.tsv", "empty"]),
        ("train.tsv", "text\tlabel\n", ["train.tsv", "no examples"]),
        ("train.tsv", "sentence\tlab\nhi\t1\n", ["train.tsv", "line 1", "'text'", "columns found",
                                                   "sentence", "Fix"]),
        ("train.tsv", "text\tlabel\nfine\t1\nbad\t0\textra\n", ["train.tsv", "line 3", "expected 2",
                                                                  "found 3", "Fix"]),
        ("train.csv", "text,label\nfine,1\n,0\n", ["train.csv", "line 3", "'text'", "empty text", "Fix"]),
        ("train.csv", "text,label\nfine,\n", ["train.csv", "line 2", "'label'", "empty label"]),
        ("train.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0\n',
         ["train.jsonl", "line 2", "malformed JSON", "Fix"]),
        ("train.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n',
         ["train.jsonl", "line 2", "'text'", "keys found"]),
    ],
)
def test_malformed_files_name_file_line_column_and_fix(tmp_path: Path, name: str, content: str,
                                                       needles: list[str]) -> None:
    f = _write(tmp_path / name, content)
    with pytest.raises(DataError) as err:
        read_examples(f)
    for n in needles:
        assert n in str(err.value), (n, str(err.value))


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_task(str(tmp_path / "nope.tsv"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="no train.tsv"):
        load_task(str(tmp_path / "empty_dir"))


def test_unknown_dev_label_names_dev_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "text\tlabel\na\t0\nb\t1\n")
    _write(tmp_path / "dev.tsv", "text\tlabel\nc\t1\nd\t7\n")
    with pytest.raises(DataError) as err:
        load_task(str(tmp_path), vocab_size=30)
    msg = str(err.value)
    assert "dev.tsv" in msg and "line 3" in msg and "'label'" in msg and "unknown label '7'" in msg
    assert "known labels" in msg


# --- tokenizers ---------------------------------------------------------------------------------------


def test_wordpiece_round_trip_and_save_load(tmp_path: Path) -> None:
    texts = ["the film was great", "the plot was awful", "a great cast and a fine script"] * 20
    tok = train_wordpiece(texts, vocab_size=120)
    ids, mask = tok.encode(["the film was great", "awful"], max_len=10)
    assert ids.shape == (2, 10) and ids.dtype == torch.long
    assert ids[0, 0].item() == tok.backend.token_to_id("[CLS]") and tok.pad_id == 0
    assert mask[1].tolist() == [1, 1, 1] + [0] * 7  # [CLS] awful [SEP]
    assert tok.decode(ids[0].tolist()) == "the film was great"
    folder = tok.save(tmp_path / "tok")
    assert (folder / "tokenizer.json").exists()
    again = load_tokenizer(folder)
    ids2, mask2 = again.encode(["the film was great", "awful"], max_len=10)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert again.fingerprint == tok.fingerprint


def test_truncation_keeps_cls_first() -> None:
    tok = word_level(["a", "b"])
    ids, mask = tok.encode(["a b a b a b a b"], max_len=4)
    assert ids[0, 0].item() == 2 and mask.sum().item() == 4


def test_tokenizer_cache_by_file_identity(tmp_path: Path) -> None:
    f = _write(tmp_path / "train.tsv", "text\tlabel\nhello world\t1\n")
    texts = ["hello world"] * 5
    a = cached_wordpiece(f, texts, vocab_size=40, root=tmp_path / "c")
    b = cached_wordpiece(f, ["totally different words"], vocab_size=40, root=tmp_path / "c")
    assert a.fingerprint == b.fingerprint  # second call hit the cache (texts ignored)
    assert len(list((tmp_path / "c" / "tokenizers").iterdir())) == 1
    c = cached_wordpiece(f, texts, vocab_size=41, root=tmp_path / "c")
    assert len(list((tmp_path / "c" / "tokenizers").iterdir())) == 2
    assert c.vocab_size <= 41


@pytest.mark.slow
@pytest.mark.skipif(not (SST2 / "train.tsv").exists(), reason="shared SST-2 data not present")
def test_sst2_loads_fast_once_cached() -> None:
    first = load_task(str(SST2))
    # no test.tsv: the 872 dev rows are split into dev and test; training keeps all 67,349 rows
    assert first.n_train == 67349 and first.n_dev == 436 and first.n_test == 436
    assert first.vocab_size <= 8000
    t0 = time.perf_counter()
    again = load_task(str(SST2))
    assert time.perf_counter() - t0 < 3.0
    assert torch.equal(first.dev_ids, again.dev_ids)
