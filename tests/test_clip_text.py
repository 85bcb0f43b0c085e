"""The CLIP track's text side: word and BPE tokenizers on hand cases, the caption material of captions.yaml
(held-out prompts disjoint from the training templates yet within their words), training captions, prompt
ensembles and the one-edit EDA augmentation of CleanCLIP."""

import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from dormant.clip import captions as cap
from dormant.clip import text
from dormant.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
YAML = REPO / "workflow" / "lib" / "dormant" / "clip" / "captions.yaml"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _raw():
    return yaml.safe_load(YAML.read_text())


def _words(s):
    """Independent of the module: placeholders out, lower case, runs of letters, digits and apostrophes."""
    return re.findall(r"[a-z0-9']+", s.replace("{adj}", " ").replace("{}", " ").lower())


def _id(word):
    return text.FIRST_WORD_ID + text.vocabulary().index(word)


# --- word tokenizer -------------------------------------------------------------------------------------------

def test_vocabulary_is_sorted_unique_and_eot_is_the_largest_id():
    vocab = text.vocabulary()
    assert list(vocab) == sorted(set(vocab))
    tok = text.WordTokenizer()
    assert tok.context_length == text.WORD_CONTEXT == 16
    assert tok.vocab_size == text.vocabulary_size() == len(vocab) + 4
    assert tok.eot_id == tok.vocab_size - 1
    assert (tok.pad_id, tok.sot_id, tok.unk_id) == (0, 1, 2)
    assert tok.word_ids["a"] == 3 and vocab[0] == "a"  # no digit-initial words: "a" sorts first
    assert set(CIFAR10) <= set(vocab)
    raw = _raw()
    expected = {w for t in raw["train_templates"] + raw["zeroshot_templates"] for w in _words(t)}
    expected |= {w for s in raw["classes"].values() for w in s} | set(raw["adjectives"]) | set(raw["eda_synonyms"])
    expected |= {w for s in raw["eda_synonyms"].values() for w in s}
    assert set(vocab) == expected


def test_word_tokenizer_hand_cases():
    tok = text.WordTokenizer(8)
    e = tok.eot_id
    out = tok(["A photo of the CAT.", "the zebra", "", "'Dog', frog; HORSE!", "the cat and the dog on the road"])
    assert out.dtype == torch.int64 and out.shape == (5, 8)
    assert out[0].tolist() == [1, _id("a"), _id("photo"), _id("of"), _id("the"), _id("cat"), e, 0]
    assert out[1].tolist() == [1, _id("the"), 2, e, 0, 0, 0, 0]  # unknown word -> 2
    assert out[2].tolist() == [1, e, 0, 0, 0, 0, 0, 0]
    assert out[3].tolist() == [1, _id("dog"), _id("frog"), _id("horse"), e, 0, 0, 0]  # quotes, case, punctuation
    # 8 words into 8 slots: the first 6 words kept, end-of-text still last
    assert out[4].tolist() == [1] + [_id(w) for w in "the cat and the dog on".split()] + [e]
    assert (out.argmax(dim=1) == torch.tensor([6, 3, 1, 4, 7])).all()  # pooling position = end-of-text
    assert tok("my cat").shape == (1, 8)
    assert tok([]).shape == (0, 8)
    assert tok.encode("someone's kitten, again") == [_id("someone's"), _id("kitten"), _id("again")]


def test_split_words():
    assert cap.split_words("Hello,world! it's 'quoted' -- x2") == ["hello", "world", "it's", "quoted", "x2"]
    assert cap.split_words(" ... ''  ") == []


def test_tokenizer_bad_input():
    with pytest.raises(ConfigError, match="clip.tokenizer"):
        text.build_tokenizer("chars", 16)
    for bad in (2, 0, 2.5, True):
        with pytest.raises(ConfigError, match="clip.context_length"):
            text.build_tokenizer("words", bad)
    with pytest.raises(ConfigError, match="clip.context_length"):
        text.build_tokenizer("bpe", 2)
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        text.WordTokenizer()(["fine", 3])


def test_training_captions_tokenise_fully_and_fit():
    labels = torch.arange(300) % 10
    caps = cap.training_captions(labels, CIFAR10, seed=0)
    assert len(caps) == 300
    tok = text.build_tokenizer("words", text.WORD_CONTEXT)
    rows = tok(caps)
    assert not (rows == text.UNK_ID).any()
    assert ((rows == tok.eot_id).sum(dim=1) == 1).all()
    lengths = torch.tensor([len(tok.encode(c)) for c in caps])
    assert (lengths <= text.WORD_CONTEXT - 2).all()  # no truncation
    assert (rows.argmax(dim=1) == lengths + 1).all()
    raw = _raw()
    for c, y in zip(caps, labels.tolist()):
        assert len(set(_words(c)) & set(raw["classes"][CIFAR10[y]])) == 1, c
    # the worst case of every template (longest class word, an adjective) fits too
    longest = max((w for s in raw["classes"].values() for w in s), key=len)
    for t in raw["train_templates"]:
        filled = t.replace("{adj}", raw["adjectives"][0]).replace("{}", longest)
        assert len(tok.encode(filled)) <= text.WORD_CONTEXT - 2 and text.UNK_ID not in tok.encode(filled), t


# --- caption material -----------------------------------------------------------------------------------------

def test_caption_material_sizes_and_rules():
    raw = _raw()
    assert len(raw["train_templates"]) >= 40 and len(raw["zeroshot_templates"]) >= 12
    assert all(t.count("{}") == 1 for t in raw["train_templates"] + raw["zeroshot_templates"])
    assert any("{adj}" in t for t in raw["train_templates"]) and not all("{adj}" in t for t in raw["train_templates"])
    assert not any("{adj}" in t for t in raw["zeroshot_templates"])
    assert list(raw["classes"]) == CIFAR10
    for name, syns in raw["classes"].items():
        assert 3 <= len(syns) <= 6 and syns[0] == name
    assert 15 <= len(raw["adjectives"]) <= 30
    assert len(raw["eda_synonyms"]) >= 40
    assert cap.load_captions()["train_templates"] == raw["train_templates"]


def test_heldout_templates_are_disjoint_but_use_training_words():
    raw = _raw()
    train, held = raw["train_templates"], raw["zeroshot_templates"]
    assert not set(train) & set(held)
    assert cap.zeroshot_templates("heldout") == held
    train_words = {w for t in train for w in _words(t)} | {w for s in raw["classes"].values() for w in s}
    train_words |= set(raw["adjectives"])
    assert cap.training_caption_words() == train_words
    held_words = {w for t in held for w in _words(t)}
    assert held_words <= train_words, held_words - train_words


def test_bad_caption_files_are_refused(tmp_path):
    raw = _raw()

    def load(**change):
        p = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
        p.write_text(yaml.safe_dump({**raw, **change}))
        return cap.load_captions(str(p))

    with pytest.raises(ConfigError, match="zeroshot_templates.*held out"):
        load(zeroshot_templates=[*raw["zeroshot_templates"], raw["train_templates"][0]])
    with pytest.raises(ConfigError, match=r"train_templates\[1\].*article"):
        load(train_templates=["the {}", "a {adj} {} here"])
    with pytest.raises(ConfigError, match=r"zeroshot_templates\[0\].*exactly one"):
        load(zeroshot_templates=["{} and {}"])
    with pytest.raises(ConfigError, match="classes.cat: the first synonym"):
        load(classes={**raw["classes"], "cat": ["kitten", "cat"]})
    with pytest.raises(ConfigError, match="classes.dog: 'kitten' is also a synonym of class 'cat'"):
        load(classes={**raw["classes"], "dog": ["dog", "kitten"]})
    with pytest.raises(ConfigError, match=r"eda_synonyms.photo\[0\]"):
        load(eda_synonyms={"photo": ["close up"]})
    with pytest.raises(ConfigError, match=r"c\d+\.yaml: unknown section"):
        load(extra=[1])


# --- captions, prompts, EDA -----------------------------------------------------------------------------------

def test_training_captions_deterministic_and_varied():
    labels = torch.arange(2000) % 10
    a = cap.training_captions(labels, CIFAR10, seed=3)
    assert a == cap.training_captions(labels.clone(), CIFAR10, seed=3)
    b = cap.training_captions(labels, CIFAR10, seed=4)
    assert a != b
    raw = _raw()
    used = {t for t in raw["train_templates"] for c in a if _fits(t, c)}
    assert used == set(raw["train_templates"])  # 2,000 uniform draws reach all templates
    assert {w for c in a for w in _words(c)} >= set(raw["adjectives"])
    with pytest.raises(ValueError, match="labels"):
        cap.training_captions(torch.tensor([0, 10]), CIFAR10, seed=0)
    with pytest.raises(ValueError, match="labels"):
        cap.training_captions(torch.zeros(2, 2, dtype=torch.long), CIFAR10, seed=0)


def _fits(template, caption):
    pattern = re.escape(template).replace(re.escape("{adj}"), "[a-z]+").replace(re.escape("{}"), "[a-z]+")
    return re.fullmatch(pattern, caption) is not None


def test_class_prompts_and_template_kinds():
    assert cap.class_prompts(["cat", "pickup_truck"], ["a photo of the {}.", "my {}"]) == [
        ["a photo of the cat.", "my cat"], ["a photo of the pickup truck.", "my pickup truck"]]
    with pytest.raises(ValueError, match=r"templates\[0\]"):
        cap.class_prompts(["cat"], ["no slot"])
    openai = cap.zeroshot_templates("openai")
    assert len(openai) == 80 and all(t.count("{}") == 1 for t in openai)
    assert "a photo of a {}." in openai
    prompts = cap.class_prompts(CIFAR10, openai)
    assert len(prompts) == 10 and all(len(p) == 80 for p in prompts) and prompts[3][openai.index("a photo of a {}.")] \
        == "a photo of a cat."
    with pytest.raises(ConfigError, match="clip.prompts"):
        cap.zeroshot_templates("imagenet")
    names = cap.imagenet_classnames()
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet paper"
    assert len(set(names)) == 998  # OpenAI's list names two pairs of classes alike (missile, sunglasses)


def test_eda_single_edits_by_hand():
    table = cap.load_captions()["eda_synonyms"]
    words = ["a", "photo", "of", "the", "cat"]  # only "photo" has synonyms
    assert table["photo"][0] == "picture" and table["photo"][-1] == "shot"
    assert cap._eda_one(words, 0, [0.0, 0.0, 0.0], table) == ["a", "picture", "of", "the", "cat"]
    assert cap._eda_one(words, 1, [0.0, 0.99, 0.0], table) == ["shot", "a", "photo", "of", "the", "cat"]
    assert cap._eda_one(words, 2, [0.0, 0.0, 0.0], table) == ["photo", "a", "of", "the", "cat"]
    assert cap._eda_one(words, 3, [0.99, 0.0, 0.0], table) == ["a", "photo", "of", "the"]
    # edits the caption does not allow fall to the next one (replace, insert, swap, delete, cyclically)
    assert cap._eda_one(["the", "cat"], 0, [0.0, 0.0, 0.0], table) == ["cat", "the"]
    assert cap._eda_one(["cat", "cat"], 2, [0.0, 0.0, 0.0], table) == ["cat"]
    assert cap._eda_one(["cat"], 3, [0.0, 0.0, 0.0], table) == ["cat"]
    assert cap._eda_one(["photo"], 3, [0.0, 0.0, 0.0], table) == ["picture"]
    assert cap._eda_one([], 1, [0.5, 0.5, 0.5], table) == []


def _edit_kind(before, after, table):
    """Which single EDA edit turns ``before`` into ``after`` (None if none does)."""
    if len(after) == len(before):
        diff = [i for i, (x, y) in enumerate(zip(before, after)) if x != y]
        if len(diff) == 1 and after[diff[0]] in table.get(before[diff[0]], []):
            return "replace"
        if len(diff) == 2 and Counter(before) == Counter(after):
            return "swap"
    if len(after) == len(before) + 1:
        for i, w in enumerate(after):
            if after[:i] + after[i + 1:] == before and any(w in table.get(v, []) for v in before):
                return "insert"
    if len(after) == len(before) - 1 and any(before[:i] + before[i + 1:] == after for i in range(len(before))):
        return "delete"
    return None


def test_eda_makes_exactly_one_edit_and_is_deterministic():
    table = cap.load_captions()["eda_synonyms"]
    caps = cap.training_captions(torch.arange(400) % 10, CIFAR10, seed=1)
    out = cap.eda(caps, seed=5)
    assert out == cap.eda(caps, seed=5) and out != cap.eda(caps, seed=6)
    kinds = Counter(_edit_kind(cap.split_words(c), o.split(" "), table) for c, o in zip(caps, out))
    assert None not in kinds and set(kinds) == {"replace", "insert", "swap", "delete"}
    assert all(o == " ".join(cap.split_words(o)) for o in out)  # lower-case words, single spaces
    tok = text.WordTokenizer()
    assert not (tok(out) == text.UNK_ID).any()  # EDA words are in the vocabulary
    with pytest.raises(ValueError, match="one string"):
        cap.eda("a photo of the cat", seed=0)


# --- BPE tokenizer and packaging ------------------------------------------------------------------------------

def test_bpe_tokenizer_rows_end_with_the_argmax():
    tok = text.build_tokenizer("bpe", 8)
    assert tok.context_length == 8 and tok.eot_id == tok.vocab_size - 1 == 49407
    out = tok(["a photo of a cat.", "one two three four five six seven eight nine ten"])
    assert out.dtype == torch.int64 and out.shape == (2, 8)
    assert out[0, 0] == out[1, 0] == tok.sot_id
    n0 = int((out[0] != 0).sum())
    assert out[0, n0 - 1] == tok.eot_id and (out[0, n0:] == 0).all()
    assert out[1, -1] == tok.eot_id  # truncated, end-of-text kept
    assert out.argmax(dim=1).tolist() == [n0 - 1, 7]
    assert tok([]).shape == (0, 8)


def test_captions_yaml_is_package_data():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "clip/captions.yaml" in pyproject["tool"]["setuptools"]["package-data"]["dormant"]
    assert cap.CAPTIONS_FILE == YAML
