"The corpus builder: cleaning rules, determinism, proportions, user files, and its errors."
import gzip, json, unicodedata
import pytest
from lm_fixtures import small_corpus, lm, one_thread  # noqa: F401 (autouse fixture)
from sae_tutorial.corpus import (CorpusConfig, Document, DEFAULT_MIX, SOURCE_LICENCES, build_corpus, corpus_stats,
                                 split_documents, strip_gutenberg, strip_hebrew_marks, read_arabic, cache_dir)

def test_hebrew_marks_removed_maqaf_becomes_space():
    s = "וַיַּ֧רְא אֱלֹהִ֛ים אֶת־הָא֖וֹר כִּי־ט֑וֹב׃"
    out = strip_hebrew_marks(s)
    assert out == "וירא אלהים את האור כי טוב׃"
    assert all(not ("\u0591" <= c <= "\u05c7") or c == "\u05c3" for c in out)
    # every letter survives, in order: the result equals the letters of the NFD form without combining marks
    letters = "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")
    assert out.replace(" ", "") == letters.replace("\u05be", "").replace(" ", "")

def test_gutenberg_markers_and_lines_dropped():
    s = "Produced by X\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nTo be.\nProject Gutenberg is a trademark\nOr not.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nfooter"
    assert strip_gutenberg(s) == "To be.\nOr not."

@pytest.mark.parametrize("max_chars", [5, 37, 200])
def test_split_documents_keeps_text_and_bounds_length(max_chars):
    text = "\n\n".join(f"paragraph {i} " + "x" * (i * 7) for i in range(12))
    docs = split_documents(text, max_chars)
    assert all(0 < len(d) <= max_chars for d in docs)
    strip = lambda t: "".join(t.split())
    assert strip("".join(docs)) == strip(text)

def test_default_mix_sums_to_one_and_has_licences():
    assert abs(sum(DEFAULT_MIX.values()) - 1) < 1e-9
    assert set(SOURCE_LICENCES) == set(DEFAULT_MIX)

def test_small_corpus_has_every_source_near_its_share():
    c = small_corpus()
    stats = {s.source: s for s in corpus_stats(c)}
    assert set(stats) == set(DEFAULT_MIX)
    total = c.cfg.total_chars
    for name, share in DEFAULT_MIX.items():
        want = share * total
        # a source stops at the first document that reaches its budget: at most one document over
        assert want <= stats[name].chars <= want + c.cfg.max_doc_chars or stats[name].chars < want and name == "base64"

def test_same_seed_same_corpus_other_seed_differs():
    cfg = dict(sources={"wiki_fr": 0.5, "shakespeare": 0.5}, total_chars=40_000)
    a = build_corpus(CorpusConfig(**cfg, seed=1), cache=False)
    b = build_corpus(CorpusConfig(**cfg, seed=1), cache=False)
    c = build_corpus(CorpusConfig(**cfg, seed=2), cache=False)
    assert list(a) == list(b) and list(a) != list(c)
    assert {d.source for d in a} == {"wiki_fr", "shakespeare"}

def test_cache_round_trip():
    cfg = CorpusConfig(sources={"sotu": 1.0}, total_chars=20_000, seed=987654)
    path = cache_dir()/"corpus"/f"{cfg.key()}.jsonl.gz"
    try:
        built = build_corpus(cfg)
        assert path.exists()
        with gzip.open(path, "rt") as f: rows = [json.loads(l) for l in f]
        assert [(r["text"], r["source"]) for r in rows] == [tuple(d) for d in built]
        assert list(build_corpus(cfg)) == list(built)
    finally: path.unlink(missing_ok=True)

def test_user_files(tmp_path):
    f = tmp_path/"notes.txt"; f.write_text("First paragraph.\n\nSecond paragraph, ünïcode.", encoding="utf-8")
    c = build_corpus(CorpusConfig(sources={}, files=(str(f),)), cache=False)
    assert list(c) == [Document("First paragraph.\n\nSecond paragraph, ünïcode.", "file:notes.txt")]
    with pytest.raises(ValueError, match="does not exist"):
        build_corpus(CorpusConfig(sources={}, files=(str(tmp_path/"missing.txt"),)), cache=False)

def test_bad_configs_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="choose from"): build_corpus(CorpusConfig(sources={"klingon": 1.0}), cache=False)
    with pytest.raises(ValueError, match="empty"): build_corpus(CorpusConfig(sources={}), cache=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not reachable"):
        build_corpus(CorpusConfig(sources={}, hf_dataset="wikitext"), cache=False)

def test_arabic_has_no_duplicates():
    texts = list(read_arabic())
    assert len(texts) > 10_000 and len(set(texts)) == len(texts)

def test_token_counts_match_tokenizer():
    _, tok = lm()
    c = small_corpus()
    docs = [d for d in c if d.source == "hebrew"][:5]
    sub = type(c)(docs); sub.cfg = c.cfg
    (s,) = corpus_stats(sub, tok)
    assert s.tokens == sum(len(tok.encode(d.text, add_special_tokens=False)) for d in docs)
