from pathlib import Path

import pytest
import torch

from netslim.core.errors import NetslimError
from netslim.data import pydocs

PROSE = """Title of the page
=================

.. module:: demo
   :synopsis: A demo module.

The :func:`demo.run` function starts the ``engine`` and returns a handle to the caller.
It accepts *any* iterable of tasks and schedules them in order of arrival.

Example usage::

    >>> import demo
    >>> demo.run([1, 2, 3])

.. function:: stop(handle)

   Stop the engine that :func:`~demo.run` started, and wait for every pending task to end.

.. code-block:: python

   This looks like a sentence but it is inside a code block of the page.
"""


def make_corpus(root: Path, per_split: int = 3) -> Path:
    """A corpus with at least ``per_split`` files in every split (names chosen by the split hash)."""
    counts = dict.fromkeys(pydocs.SPLITS, 0)
    i = 0
    while min(counts.values()) < per_split:
        rel = f"sec{i % 3}/page{i}.rst.txt"
        split = pydocs.split_of(rel)
        if counts[split] < per_split:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(PROSE.replace("demo", f"demo{i}"))
            counts[split] += 1
        i += 1
    return root


class FakeTokenizer:
    """One token per character (code point), EOS = 0: enough to check how blocks are cut."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_splits_are_disjoint_deterministic_and_cover_every_file(tmp_path):
    root = make_corpus(tmp_path)
    files = {s: pydocs.list_files(s, root) for s in pydocs.SPLITS}
    assert all(len(f) == 3 for f in files.values())
    every = sorted(p for f in files.values() for p in f)
    assert every == sorted(root.glob("**/*.rst.txt"))  # covered, and disjoint (no repeats)
    assert files == {s: pydocs.list_files(s, root) for s in pydocs.SPLITS}
    assert all(f == sorted(f) for f in files.values())


def test_split_depends_only_on_relative_path(tmp_path):
    a, b = make_corpus(tmp_path / "a"), tmp_path / "b"
    (b / "extra").mkdir(parents=True)
    (b / "extra" / "new.rst.txt").write_text("x")
    for p in a.glob("**/*.rst.txt"):  # same files at another root, plus one more file
        (b / p.relative_to(a)).parent.mkdir(parents=True, exist_ok=True)
        (b / p.relative_to(a)).write_text(p.read_text())
    for s in pydocs.SPLITS:
        rel_a = [p.relative_to(a) for p in pydocs.list_files(s, a)]
        rel_b = [p.relative_to(b) for p in pydocs.list_files(s, b) if p.parent.name != "extra"]
        assert rel_a == rel_b


def test_split_proportions_roughly_80_10_10():
    names = [f"dir/file{i}.rst.txt" for i in range(5000)]
    share = {s: sum(pydocs.split_of(n) == s for n in names) / len(names) for s in pydocs.SPLITS}
    assert share["calibration"] == pytest.approx(0.8, abs=0.03)
    assert share["validation"] == pytest.approx(0.1, abs=0.02)
    assert share["test"] == pytest.approx(0.1, abs=0.02)


def test_env_var_selects_the_corpus(tmp_path, monkeypatch):
    root = make_corpus(tmp_path)
    monkeypatch.setenv(pydocs.ENV_VAR, str(root))
    assert pydocs.corpus_root() == root
    assert pydocs.list_files("test") == pydocs.list_files("test", root)


def test_missing_corpus_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv(pydocs.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(NetslimError, match="python3.11-doc.*NETSLIM_TEXT"):
        pydocs.list_files("test")


def test_unknown_split_is_rejected(tmp_path):
    with pytest.raises(NetslimError, match="calibration, test, validation"):
        pydocs.list_files("train", make_corpus(tmp_path))


def test_blocks_are_documents_joined_by_eos_with_tail_dropped(tmp_path):
    root = make_corpus(tmp_path)
    tok = FakeTokenizer()
    stream = [t for p in pydocs.list_files("validation", root) for t in [*map(ord, pydocs.read_text(p)), 0]]
    blocks = pydocs.token_blocks(tok, "validation", seq_len=100, root=root)
    assert blocks.dtype == torch.long and blocks.shape == (len(stream) // 100, 100)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    first = pydocs.token_blocks(tok, "validation", seq_len=100, num_blocks=2, root=root)
    assert torch.equal(first, blocks[:2])


def test_block_arguments_are_validated(tmp_path):
    root = make_corpus(tmp_path)
    with pytest.raises(NetslimError, match="seq_len"):
        pydocs.token_blocks(FakeTokenizer(), "test", seq_len=1, root=root)
    with pytest.raises(NetslimError, match="fewer than one block"):
        pydocs.token_blocks(FakeTokenizer(), "test", seq_len=10**7, root=root)


def test_calibration_tokens_are_seeded_draws_of_the_whole_calibration_split(tmp_path):
    from netslim.train.lm_tasks import CausalLMTask

    root = make_corpus(tmp_path)
    tok = FakeTokenizer()
    task = CausalLMTask(tokenizer=tok, root=str(root), seq_len=16, limit=1)  # limit: evaluation only
    every = pydocs.token_blocks(tok, "calibration", seq_len=64, root=root)
    a = task.calibration_tokens(5, 64, seed=1)
    assert a.shape == (5, 64)
    assert torch.equal(a, task.calibration_tokens(5, 64, seed=1))
    assert not torch.equal(a, task.calibration_tokens(5, 64, seed=2))
    rows = {tuple(r) for r in every.tolist()}
    assert all(tuple(r) in rows for r in a.tolist())


def test_sentences_are_prose_without_markup_or_code(tmp_path):
    root = make_corpus(tmp_path)
    s = pydocs.sentences("test", root=root)
    assert s == pydocs.sentences("test", root=root)
    assert any(x.startswith("It accepts any iterable of tasks") for x in s)
    assert any("Stop the engine that run started" in x for x in s)  # directive body is prose
    assert all("code block" not in x and ">>>" not in x for x in s)  # code is not
    assert all(":func:" not in x and "``" not in x and "*" not in x for x in s)
    assert len(s) == len(set(s))
    assert pydocs.sentences("test", root=root, limit=2) == s[:2]
    assert all(40 <= len(x) <= 300 for x in s)


@pytest.mark.skipif(not Path(pydocs.DEFAULT_ROOT).is_dir(), reason="python3.11-doc not installed")
def test_real_corpus_has_all_three_splits():
    n = {s: len(pydocs.list_files(s, pydocs.DEFAULT_ROOT)) for s in pydocs.SPLITS}
    assert n["calibration"] > 5 * n["validation"] > 0 and n["test"] > 0
    assert len(pydocs.sentences("validation", root=pydocs.DEFAULT_ROOT, limit=500)) == 500
