import csv
import os
from pathlib import Path

import pytest
import torch

from lightning_dsl.data import TextDataModule
from lightning_dsl.data import text as text_module

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst2"

TRAIN = [
    ("a good film", 1),
    ("a bad film", 0),
    ("good acting and a good story", 1),
    ("bad acting , bad story", 0),
    ("the film is good", 1),
    ("the story is bad", 0),
]
VAL = [("a good story", 1), ("a bad film", 0), ("good", 1)]
TEST = [("zebra film", 1), ("a bad zebra story", 0)]  # "zebra" appears only in the test file


def write_tsv(path: Path, rows: list[tuple[str, int]], header: str = "sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path


def sst2_like(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_tsv(root / "train.tsv", TRAIN)
    write_tsv(root / "dev.tsv", VAL)
    write_tsv(root / "test.tsv", TEST)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return sst2_like(tmp_path / "data")


def make(root: Path, **kwargs: object) -> TextDataModule:
    kwargs.setdefault("vocab_size", 100)
    kwargs.setdefault("batch_size", 4)
    return TextDataModule(root=str(root), **kwargs)  # type: ignore[arg-type]


def test_sst2_preset_attributes_at_construction(root: Path) -> None:
    dm = make(root)
    assert (dm.num_classes, dm.vocab_size, dm.max_length, dm.batch_size, dm.pad_id) == (2, 100, 64, 4, 0)
    assert (dm.train_file, dm.val_file, dm.test_file, dm.delimiter) == ("train.tsv", "dev.tsv", "test.tsv", "\t")


def test_setup_fit_loads_train_and_val_only(root: Path) -> None:
    dm = make(root)
    dm.setup("fit")
    assert len(dm.train_set) == len(TRAIN) and len(dm.val_set) == len(VAL) and dm.test_set is None
    assert dm.num_classes == 2 and dm.vocab_size == dm.tokenizer.get_vocab_size() <= 100
    dm.setup("test")
    assert len(dm.test_set) == len(TEST)


def test_special_token_ids(root: Path) -> None:
    dm = make(root)
    dm.setup("fit")
    assert [dm.tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]")] == [0, 1, 2]


def test_tokenizer_trained_on_the_training_split_only(root: Path) -> None:
    dm = make(root)
    dm.setup(None)
    assert "zebra" not in dm.tokenizer.get_vocab()
    assert "good" in dm.tokenizer.get_vocab()
    ids = dm.encode(["zebra film"])[0]
    assert ids[0] == 2 and 1 in ids  # [CLS], then [UNK] for the word only seen in the test file
    assert dm.tokenizer.encode("zebra film").tokens == ["[CLS]", "[UNK]", "film"]
    assert dm.test_set.ids[0] == ids


def test_tokenizer_cache_reused_and_invalidated(root: Path) -> None:
    dm = make(root)
    dm.setup("fit")
    path = dm.tokenizer_path
    assert dm.tokenizer_trained and path is not None and path.is_file() and path.parent == root / ".cache"
    mtime = path.stat().st_mtime_ns

    again = make(root)
    again.setup("fit")
    assert not again.tokenizer_trained and again.tokenizer_path == path and path.stat().st_mtime_ns == mtime
    assert again.train_set.ids == dm.train_set.ids

    other = make(root, vocab_size=60)
    other.setup("fit")
    assert other.tokenizer_trained and other.tokenizer_path != path
    uncased = make(root, lowercase=False)
    uncased.setup("fit")
    assert uncased.tokenizer_trained and uncased.tokenizer_path not in (path, other.tokenizer_path)


def test_cache_invalidated_when_training_file_changes(root: Path) -> None:
    dm = make(root)
    dm.setup("fit")
    write_tsv(root / "train.tsv", [*TRAIN, ("a zebra", 1)])
    os.utime(root / "train.tsv", ns=(0, dm.tokenizer_path.stat().st_mtime_ns + 10**9))
    again = make(root)
    again.setup("fit")
    assert again.tokenizer_trained and again.tokenizer_path != dm.tokenizer_path
    assert "zebra" in again.tokenizer.get_vocab()


def test_cache_falls_back_to_user_cache_when_root_not_writable(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    real = text_module._writable_dir
    monkeypatch.setattr(text_module, "_writable_dir", lambda path: path != root / ".cache" and real(path))
    dm = make(root)
    dm.setup("fit")
    assert dm.tokenizer_path.parent == tmp_path / "xdg" / "lightning_dsl" and dm.tokenizer_path.is_file()
    assert not (root / ".cache").exists()


def test_explicit_cache_dir(root: Path, tmp_path: Path) -> None:
    dm = make(root, cache_dir=str(tmp_path / "tok"))
    dm.setup("fit")
    assert dm.tokenizer_path.parent == tmp_path / "tok"


def test_dynamic_padding_and_mask(root: Path) -> None:
    dm = make(root, batch_size=3)
    dm.setup("validate")
    inputs, labels = next(iter(dm.val_dataloader()))
    input_ids, mask = inputs.values, inputs.mask
    lengths = [len(ids) for ids in dm.val_set.ids]
    assert input_ids.dtype == torch.long and mask.dtype == torch.bool and labels.dtype == torch.long
    assert input_ids.shape == mask.shape == (3, max(lengths)) and labels.tolist() == [1, 0, 1]
    assert mask.sum(1).tolist() == lengths
    assert torch.equal(mask, input_ids != dm.pad_id)
    assert (input_ids[:, 0] == dm.tokenizer.token_to_id("[CLS]")).all()
    assert min(lengths) < max(lengths)  # some row is padded


def test_batches_padded_per_batch_not_globally(root: Path) -> None:
    dm = make(root, batch_size=1)
    dm.setup("validate")
    widths = [batch[0].shape[1] for batch in dm.val_dataloader()]
    assert widths == [len(ids) for ids in dm.val_set.ids]


def test_truncation_at_max_length(root: Path) -> None:
    write_tsv(root / "dev.tsv", [("good " * 50, 1), ("bad", 0)])
    dm = make(root, max_length=8)
    dm.setup("validate")
    assert [len(ids) for ids in dm.val_set.ids] == [8, 2]
    inputs, _ = next(iter(dm.val_dataloader()))
    input_ids, mask = inputs.values, inputs.mask
    assert input_ids.shape == (2, 8) and mask[0].all() and input_ids[0, 0] == 2


def test_training_loader_shuffled_by_seed(root: Path) -> None:
    def order(seed: int) -> list[list[int]]:
        dm = make(root, batch_size=1, seed=seed)
        dm.setup("fit")
        return [labels.tolist() + inputs.values[0].tolist() for inputs, labels in dm.train_dataloader()]

    assert order(0) == order(0)
    assert any(order(0) != order(s) for s in range(1, 5))
    dm = make(root, batch_size=1)
    dm.setup("fit")
    assert [labels.item() for _, labels in dm.val_dataloader()] == [label for _, label in VAL]


def test_csv_with_column_choice(tmp_path: Path) -> None:
    rows = [("id", "review", "stars", "sentiment")]
    rows += [(str(i), f'"{text}", said someone', "5", str(label)) for i, (text, label) in enumerate(TRAIN)]
    rows += [("9", "neutral, i suppose", "3", "2")]
    with open(tmp_path / "reviews.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    dm = TextDataModule(
        root=str(tmp_path),
        preset=None,
        train_file="reviews.csv",
        val_file="reviews.csv",
        text_column="review",
        label_column="sentiment",
        vocab_size=100,
        batch_size=8,
    )
    assert dm.delimiter == "," and dm.num_classes is None
    dm.setup("fit")
    assert dm.num_classes == 3 and len(dm.train_set) == 7
    assert dm.tokenizer.encode("neutral, i suppose").tokens[:3] == ["[CLS]", "neutral", ","]
    assert '"' in dm.tokenizer.get_vocab()  # the quotes inside a quoted CSV field are text
    _, labels = next(iter(dm.val_dataloader()))
    assert labels.tolist() == [1, 0, 1, 0, 1, 0, 2]
    with pytest.raises(ValueError, match="needs a test split, but `test_file` is None"):
        dm.setup("test")


def test_no_validation_file_gives_empty_val_loader(root: Path) -> None:
    dm = make(root, preset=None, train_file="train.tsv", text_column="sentence", label_column="label")
    dm.setup("fit")
    assert dm.val_dataloader() == [] and dm.val_set is None


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "Expected argument `batch_size` to be an int >= 1, but got 0."),
        ({"max_length": 1}, "Expected argument `max_length` to be an int >= 2, but got 1."),
        ({"vocab_size": 3}, "Expected argument `vocab_size` to be an int >= 4, but got 3."),
        ({"num_workers": -1}, "Expected argument `num_workers` to be an int >= 0, but got -1."),
        ({"batch_size": 2.5}, "Expected argument `batch_size` to be an int >= 1, but got 2.5."),
        ({"seed": "x"}, "Expected argument `seed` to be an int, but got 'x'."),
        ({"preset": "imdb"}, "Expected argument `preset` to be one of ['sst2'] or None, but got 'imdb'."),
        ({"delimiter": ";"}, "Expected argument `delimiter` to be a tab '\\t' or a comma ',', but got ';'."),
        ({"preset": None}, "Expected argument `train_file` to be set when `preset` is None, but got None"),
        (
            {"preset": None, "train_file": "a.csv", "text_column": "t"},
            "Expected argument `label_column` to be set when `preset` is None",
        ),
        ({"label_column": "sentence"}, "`text_column` and `label_column` to differ, but both are 'sentence'."),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as error:
        TextDataModule(root=str(tmp_path), **kwargs)  # type: ignore[arg-type]
    assert message in str(error.value)


def test_missing_file_names_path_and_preset_files(tmp_path: Path) -> None:
    dm = TextDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert str((tmp_path / "nowhere" / "train.tsv").resolve()) in message
    assert "expects train.tsv, dev.tsv and test.tsv" in message and "'sentence' and 'label'" in message


def test_missing_test_file(root: Path) -> None:
    (root / "test.tsv").unlink()
    dm = make(root)
    dm.setup("fit")  # fit does not need it
    with pytest.raises(FileNotFoundError, match=r"the test file '.*test\.tsv' was not found"):
        dm.setup("test")


def test_missing_explicit_file(tmp_path: Path) -> None:
    dm = TextDataModule(root=str(tmp_path), preset=None, train_file="x.csv", text_column="t", label_column="l")
    with pytest.raises(FileNotFoundError, match=r"x\.csv' was not found \(`train_file`='x.csv'\)"):
        dm.setup("fit")


@pytest.mark.parametrize("content", ["", "\n\n", "sentence\tlabel\n", "sentence\tlabel\n\n"])
def test_empty_file(root: Path, content: str) -> None:
    (root / "train.tsv").write_text(content)
    with pytest.raises(ValueError, match="train.tsv (is empty|has no data rows)"):
        make(root).setup("fit")


def test_unknown_column_lists_header(root: Path) -> None:
    dm = make(root, text_column="text")
    with pytest.raises(ValueError) as error:
        dm.setup("fit")
    assert "column 'text' not found; the header has the columns ['sentence', 'label']" in str(error.value)


def test_csv_read_as_tsv_lists_one_column(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("text,label\nhello,1\n")
    dm = TextDataModule(root=str(tmp_path), preset=None, train_file="d.txt", text_column="text", label_column="label")
    with pytest.raises(ValueError, match=r"\['text,label'\] \(read with the delimiter tab"):
        dm.setup("fit")


@pytest.mark.parametrize(("bad", "shown"), [("pos", "'pos'"), ("-1", "'-1'"), ("1.5", "'1.5'"), ("", "''")])
def test_bad_label_names_file_row_and_value(root: Path, bad: str, shown: str) -> None:
    (root / "dev.tsv").write_text(f"sentence\tlabel\nfine\t1\nnot fine\t{bad}\n")
    with pytest.raises(ValueError) as error:
        make(root).setup("fit")
    message = str(error.value)
    assert str(root / "dev.tsv") in message and "line 3" in message
    assert f"expected an integer label >= 0 in column 'label', but got {shown}" in message


def test_label_beyond_training_classes(root: Path) -> None:
    write_tsv(root / "test.tsv", [("fine", 1), ("odd", 5)])
    with pytest.raises(ValueError, match=r"test.tsv, line 3: expected a label in 0..1 .* but got 5"):
        make(root).setup("test")


def test_sst2_preset_rejects_more_classes(root: Path) -> None:
    write_tsv(root / "train.tsv", [*TRAIN, ("meh", 2)])
    with pytest.raises(ValueError, match="expected labels 0..1 for the preset 'sst2', but found 2"):
        make(root).setup("fit")


def test_short_row(root: Path) -> None:
    (root / "train.tsv").write_text("sentence\tlabel\nfine\t1\nno label here\n")
    with pytest.raises(ValueError, match=r"train.tsv, line 3: expected 2 fields"):
        make(root).setup("fit")


def test_bad_stage(root: Path) -> None:
    with pytest.raises(ValueError, match="Expected argument `stage` to be one of"):
        make(root).setup("train")


def test_loader_before_setup(root: Path) -> None:
    with pytest.raises(RuntimeError, match="call `setup\\(\\)` for the training split"):
        make(root).train_dataloader()


# ---------------------------------------------------------------------------------------------- real SST-2


@pytest.mark.shared_data
def test_real_sst2(tmp_path: Path) -> None:
    if not SST2.is_dir():
        pytest.skip(f"{SST2} not found: the shared SST-2 copy is optional")
    dm = TextDataModule(root=str(SST2), cache_dir=str(tmp_path / "cache"), vocab_size=8000, batch_size=32)
    dm.setup(None)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (67_349, 872, 1_821)
    assert dm.num_classes == 2 and dm.vocab_size == 8000 and dm.tokenizer_trained
    assert sum(dm.train_set.labels) == 37_569 and sum(dm.val_set.labels) == 444 and sum(dm.test_set.labels) == 909
    inputs, labels = next(iter(dm.train_dataloader()))
    input_ids, mask = inputs.values, inputs.mask
    assert input_ids.shape[0] == mask.shape[0] == labels.shape[0] == 32
    assert input_ids.shape == mask.shape and input_ids.shape[1] <= dm.max_length
    assert torch.equal(mask, input_ids != 0) and (input_ids[:, 0] == 2).all()
    assert max(len(ids) for ids in dm.test_set.ids) == dm.max_length  # some test sentences are truncated at 64


def test_tokenizer_ids_follow_a_fixed_order() -> None:
    """The trainer numbers tokens in hash-map order; the module numbers them: special tokens, then sorted."""
    texts = [f"{a} {b} film" for a in ("good", "bad", "dull", "witty", "slow") for b in ("plot", "cast", "music")]
    for _ in range(3):
        vocab = text_module.build_tokenizer(texts, vocab_size=60).get_vocab()
        tokens = sorted(vocab, key=vocab.__getitem__)
        assert tokens[:3] == ["[PAD]", "[UNK]", "[CLS]"] and tokens[3:] == sorted(tokens[3:])


def test_a_given_tokenizer_file_is_used_as_it_is(tmp_path: Path) -> None:
    root = sst2_like(tmp_path / "a")
    first = TextDataModule(root=str(root), vocab_size=50)
    first.setup("fit")
    other = sst2_like(tmp_path / "b")  # another copy: its own cache would train again
    dm = TextDataModule(root=str(other), vocab_size=50, tokenizer_file=str(first.tokenizer_path))
    dm.setup("fit")
    assert not dm.tokenizer_trained and dm.tokenizer_path == first.tokenizer_path
    assert dm.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert not list((other / ".cache").glob("*.json"))


def test_a_bad_tokenizer_file_is_refused(tmp_path: Path) -> None:
    root = sst2_like(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="`tokenizer_file`: no file at"):
        TextDataModule(root=str(root), tokenizer_file=str(tmp_path / "missing.json")).setup("fit")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="`tokenizer_file`: .* is not a `tokenizers` JSON file"):
        TextDataModule(root=str(root), tokenizer_file=str(bad)).setup("fit")
