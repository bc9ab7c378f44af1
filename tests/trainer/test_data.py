import gzip

import numpy as np
import pytest

from trainer.data import build_corpus, clean_unique, load_embeddings, split_of
from trainer.sources import CorpusError, debian_changelogs, debian_synopses, wordnet_glosses


def test_wordnet_parser_skips_licence(tmp_path):
    for pos in ("noun", "verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(
            "  1 This software and database is licensed\n"
            f"00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived ({pos})  \n"
        )
    assert list(wordnet_glosses(tmp_path)) == [f"that which is perceived ({p})  \n" for p in
                                                ("noun", "verb", "adj", "adv")]
    with pytest.raises(CorpusError, match="wordnet-base"):
        list(wordnet_glosses(tmp_path / "none"))


def test_debian_and_changelog_parsers(tmp_path):
    dump = "Package: a\nDescription: fast text search\nSize: 3\n\nPackage: b\nDescription: a tool\n"
    assert list(debian_synopses(dump)) == ["fast text search", "a tool"]
    d = tmp_path / "pkg"
    d.mkdir()
    (d / "changelog.Debian.gz").write_bytes(gzip.compress(
        b"pkg (1.0) unstable; urgency=low\n\n  * Fix the build\n    on arm64.\n  * New upstream.\n\n -- X\n"))
    assert list(debian_changelogs(tmp_path)) == ["Fix the build on arm64.", "New upstream."]


def test_split_is_stable_and_dedup(tmp_path):
    assert split_of("hello world") == split_of("hello world")
    assert clean_unique(["a  b c d e f g h i", "a b c d e f g h i", "short"]) == ["a b c d e f g h i"]
    shares = [split_of(f"text number {i}") for i in range(2000)]
    assert 0.85 < shares.count("train") / 2000 < 0.95


def test_unknown_source(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus source 'nope'"):
        build_corpus(tmp_path, ["nope"])


def test_load_embeddings_checks(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((3, 4), np.float64))
    assert load_embeddings(tmp_path / "ok.npy", 4).dtype == np.float32
    np.save(tmp_path / "bad.npy", np.ones((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        load_embeddings(tmp_path / "bad.npy", 4)
    np.save(tmp_path / "nan.npy", np.full((2, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        load_embeddings(tmp_path / "nan.npy", 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable"):
        load_embeddings(tmp_path / "obj.npy", 4)
