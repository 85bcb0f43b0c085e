"""Captions and prompts of the CLIP track: training captions for labelled images, zero-shot prompt templates,
per-class prompt ensembles and the EDA-style caption augmentation of CleanCLIP.

The tiny offline preset has labelled CIFAR-10 images but no captions, so :func:`training_captions` writes one
per image from the material in ``captions.yaml`` (templates, class synonyms, adjectives). Zero-shot
classification (CLIP, Radford et al. 2021, section 3.1.4) averages the text embeddings of one class's prompts
over a set of templates; :func:`zeroshot_templates` gives either this project's held-out templates (none is
a training template) or the 80 ImageNet templates of OpenAI's CLIP that BadCLIP/CleanCLIP evaluate with.
CleanCLIP (Bansal et al., ICCV 2023) compares each caption with an augmented view made by EDA
(Wei and Zou, EMNLP 2019): :func:`eda` makes one such edit per caption, drawing synonyms from the table in
``captions.yaml`` instead of WordNet (which is not available offline) -- a deviation from the paper.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import torch

from dormant.errors import ConfigError

CAPTIONS_FILE = Path(__file__).with_name("captions.yaml")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TEMPLATE_KINDS = ("heldout", "openai")
SECTIONS = ("train_templates", "zeroshot_templates", "classes", "adjectives", "eda_synonyms")

_WORD = re.compile(r"[a-z0-9']+")
_ONE_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_ARTICLE_BEFORE_SLOT = re.compile(r"(?:^|[^a-z0-9'])a \{")


def split_words(text: str) -> list[str]:
    """The words of ``text`` as the word tokenizer sees them: lower-cased, split on every character that is
    not a-z, 0-9 or an apostrophe (so punctuation is dropped), apostrophes around a word stripped."""
    return [w for w in (m.strip("'") for m in _WORD.findall(text.lower())) if w]


def _template_words(template: str) -> list[str]:
    return split_words(template.replace("{adj}", " ").replace("{}", " "))


def _check_template(template, where: str, *, allow_adj: bool) -> str:
    if not isinstance(template, str):
        raise ConfigError(f"{where}: expected a string, got {type(template).__name__}")
    if template.count("{}") != 1:
        raise ConfigError(f"{where}: {template!r} must contain exactly one '{{}}' (the class word)")
    n_adj = template.count("{adj}")
    if n_adj > (1 if allow_adj else 0):
        raise ConfigError(f"{where}: {template!r} may contain " + ("at most one '{adj}'" if allow_adj else
                                                                    "no '{adj}' (prompts have no adjective)"))
    rest = template.replace("{adj}", "").replace("{}", "")
    if "{" in rest or "}" in rest:
        raise ConfigError(f"{where}: {template!r} has a brace other than the placeholders '{{}}' and '{{adj}}'")
    if _ARTICLE_BEFORE_SLOT.search(template.lower()):
        raise ConfigError(f"{where}: {template!r} puts the article 'a' before a placeholder, which does not "
                          "agree with words such as 'airplane' or 'orange'; use 'the', 'this', 'my', 'one' ...")
    return template


def _check_word_list(value, where: str, *, min_len: int = 1) -> list[str]:
    if not isinstance(value, list) or len(value) < min_len:
        raise ConfigError(f"{where}: expected a list of at least {min_len} word(s)")
    for i, w in enumerate(value):
        if not isinstance(w, str) or not _ONE_WORD.fullmatch(w):
            raise ConfigError(f"{where}[{i}]: {w!r} is not one lower-case word (a-z, 0-9, inner apostrophes)")
    if len(set(value)) != len(value):
        dup = next(w for w in value if value.count(w) > 1)
        raise ConfigError(f"{where}: {dup!r} is listed twice")
    return list(value)


def _check_templates(value, key: str, *, allow_adj: bool) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of templates")
    out = [_check_template(t, f"{key}[{i}]", allow_adj=allow_adj) for i, t in enumerate(value)]
    if len(set(out)) != len(out):
        dup = next(t for t in out if out.count(t) > 1)
        raise ConfigError(f"{key}: {dup!r} is listed twice")
    return out


@functools.cache
def load_captions(path: str | None = None) -> dict:
    """``captions.yaml`` (or the file ``path``) read strictly and checked against the rules in its header.
    Any violation is a :class:`ConfigError` naming the file and the key. Cached: treat the result as
    read-only."""
    from dormant.config import read_file

    p = Path(path) if path is not None else CAPTIONS_FILE
    raw = read_file(p)
    try:
        extra = sorted(set(raw) - set(SECTIONS))
        if extra:
            raise ConfigError(f"unknown section(s) {', '.join(extra)} (expected {', '.join(SECTIONS)})")
        missing = [s for s in SECTIONS if s not in raw]
        if missing:
            raise ConfigError(f"missing section(s) {', '.join(missing)}")
        train = _check_templates(raw["train_templates"], "train_templates", allow_adj=True)
        heldout = _check_templates(raw["zeroshot_templates"], "zeroshot_templates", allow_adj=False)
        shared = sorted(set(train) & set(heldout))
        if shared:
            raise ConfigError(f"zeroshot_templates: {shared[0]!r} is also a training template; the zero-shot "
                              "templates must be held out")
        classes = raw["classes"]
        if not isinstance(classes, dict) or not classes:
            raise ConfigError("classes: expected a mapping of class name -> list of synonyms")
        owner: dict[str, str] = {}
        checked: dict[str, list[str]] = {}
        for name, syns in classes.items():
            syns = _check_word_list(syns, f"classes.{name}")
            if syns[0] != name:
                raise ConfigError(f"classes.{name}: the first synonym must be the class name {name!r}, "
                                  f"got {syns[0]!r}")
            for w in syns:
                if w in owner:
                    raise ConfigError(f"classes.{name}: {w!r} is also a synonym of class {owner[w]!r}")
                owner[w] = name
            checked[name] = syns
        adjectives = _check_word_list(raw["adjectives"], "adjectives")
        table = raw["eda_synonyms"]
        if not isinstance(table, dict) or not table:
            raise ConfigError("eda_synonyms: expected a mapping of word -> list of synonyms")
        eda_table: dict[str, list[str]] = {}
        for word, syns in table.items():
            if not isinstance(word, str) or not _ONE_WORD.fullmatch(word):
                raise ConfigError(f"eda_synonyms: key {word!r} is not one lower-case word")
            syns = _check_word_list(syns, f"eda_synonyms.{word}")
            if word in syns:
                raise ConfigError(f"eda_synonyms.{word}: lists the word itself as its synonym")
            eda_table[word] = syns
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return {"train_templates": train, "zeroshot_templates": heldout, "classes": checked,
            "adjectives": adjectives, "eda_synonyms": eda_table}


def caption_words() -> set[str]:
    """Every word of ``captions.yaml`` (templates of both kinds, class synonyms, adjectives, both sides of the
    EDA table) and the CIFAR-10 class names: the word tokenizer's vocabulary (dormant.clip.text)."""
    data = load_captions()
    words = set(CIFAR10_CLASSES)
    for t in data["train_templates"] + data["zeroshot_templates"]:
        words.update(_template_words(t))
    for syns in data["classes"].values():
        words.update(syns)
    words.update(data["adjectives"])
    for w, syns in data["eda_synonyms"].items():
        words.add(w)
        words.update(syns)
    return words


def training_caption_words() -> set[str]:
    """The words a training caption can contain: those of the training templates, class synonyms and
    adjectives (held-out prompts must use only these)."""
    data = load_captions()
    words = {w for t in data["train_templates"] for w in _template_words(t)}
    for syns in data["classes"].values():
        words.update(syns)
    words.update(data["adjectives"])
    return words


def class_synonyms(name: str) -> list[str]:
    """The words a caption may use for class ``name``: its ``captions.yaml`` synonyms (the name first), or
    for a class that file does not list, the name itself with '_' read as a space (such words are unknown to
    the word tokenizer, which only knows ``captions.yaml``)."""
    classes = load_captions()["classes"]
    return list(classes[name]) if name in classes else [name.replace("_", " ")]


def _check_labels(labels, n_classes: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected a 1-D integer tensor, got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    labels = labels.long().cpu()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(f"labels: values must lie in [0, {n_classes}) (one per class name), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def training_captions(labels, classes: list[str], seed: int) -> list[str]:
    """One caption per label: a training template with its ``{}`` filled by a synonym of the label's class
    (``classes[label]``, see :func:`class_synonyms`) and its ``{adj}``, if any, by an adjective. Template,
    synonym and adjective are drawn uniformly from a ``torch.Generator`` seeded with ``seed``, so the same
    labels and seed always give the same captions."""
    if not classes:
        raise ValueError("classes: expected at least one class name")
    labels = _check_labels(labels, len(classes))
    data = load_captions()
    templates, adjectives = data["train_templates"], data["adjectives"]
    synonyms = [class_synonyms(c) for c in classes]
    n = labels.numel()
    g = torch.Generator().manual_seed(int(seed))
    t_idx = torch.randint(len(templates), (n,), generator=g).tolist()
    a_idx = torch.randint(len(adjectives), (n,), generator=g).tolist()
    counts = torch.tensor([len(s) for s in synonyms])[labels]
    s_idx = torch.minimum((torch.rand(n, generator=g) * counts).long(), counts - 1).tolist()
    return [templates[t].replace("{adj}", adjectives[a]).replace("{}", synonyms[y][s])
            for t, a, y, s in zip(t_idx, a_idx, labels.tolist(), s_idx)]


def zeroshot_templates(kind: str) -> list[str]:
    """Prompt templates for the zero-shot classifier, each with one ``{}`` for the class name.

    ``heldout``: this project's templates from ``captions.yaml``, disjoint from the training templates.
    ``openai``: the 80 ImageNet templates of OpenAI's CLIP (its "Prompt Engineering for ImageNet" notebook),
    as shipped by open_clip (MIT licence) in ``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``,
    the prompts BadCLIP/CleanCLIP evaluate ImageNet with. Their words are mostly outside the word
    tokenizer's vocabulary: pair them with the ``bpe`` tokenizer."""
    if kind == "heldout":
        return list(load_captions()["zeroshot_templates"])
    if kind == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [make("{}") for make in OPENAI_IMAGENET_TEMPLATES]
    raise ConfigError(f"clip.prompts: unknown template kind {kind!r} (expected one of: {', '.join(TEMPLATE_KINDS)})")


def class_prompts(classes: list[str], templates: list[str]) -> list[list[str]]:
    """Per class, one prompt per template: ``{}`` replaced by the class name with '_' read as a space (the
    prompt ensemble of CLIP's zero-shot classifier averages their embeddings)."""
    if not templates:
        raise ValueError("templates: expected at least one prompt template")
    for i, t in enumerate(templates):
        if not isinstance(t, str) or t.count("{}") != 1 or "{adj}" in t:
            raise ValueError(f"templates[{i}]: {t!r} must be a string with exactly one '{{}}' and no '{{adj}}'")
    return [[t.replace("{}", name.replace("_", " ")) for t in templates] for name in classes]


def imagenet_classnames() -> list[str]:
    """The 1,000 ImageNet class names OpenAI's CLIP prompts with, as shipped by open_clip (MIT licence) in
    ``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``, in the order of the ImageNet label ids."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


EDA_OPS = ("replace", "insert", "swap", "delete")


def _eda_one(words: list[str], op: int, u: list[float], table: dict[str, list[str]]) -> list[str]:
    """One edit of ``words``: op 0 replaces a word that has synonyms by one of them, 1 inserts a synonym of
    such a word at a position, 2 swaps two different words, 3 deletes one word. An edit the caption does not
    allow (no word with synonyms, fewer than two distinct words, a single word) falls to the next possible
    one, cycling through replace, insert, swap, delete; a caption that allows none comes back unchanged.
    ``u`` holds three uniform draws in [0, 1) that choose positions and synonyms."""

    def pick(n: int, x: float) -> int:
        return min(int(x * n), n - 1)

    with_syn = [i for i, w in enumerate(words) if w in table]
    distinct = len(set(words)) >= 2
    possible = (bool(with_syn), bool(with_syn), distinct, len(words) >= 2)
    order = [k for k in (*range(op, 4), *range(op)) if possible[k]]
    if not order:
        return list(words)
    op = order[0]
    out = list(words)
    if op in (0, 1):
        i = with_syn[pick(len(with_syn), u[0])]
        syns = table[words[i]]
        new = syns[pick(len(syns), u[1])]
        if op == 0:
            out[i] = new
        else:
            out.insert(pick(len(words) + 1, u[2]), new)
    elif op == 2:
        i = pick(len(words), u[0])
        others = [j for j, w in enumerate(words) if w != words[i]]
        j = others[pick(len(others), u[1])]
        out[i], out[j] = out[j], out[i]
    else:
        del out[pick(len(words), u[0])]
    return out


def eda(captions: list[str], seed: int) -> list[str]:
    """The augmented view of each caption for CleanCLIP's in-modal loss: exactly one EDA edit (Wei and Zou
    2019: synonym replacement, random insertion of a synonym, random swap, random deletion), the operation
    drawn uniformly per caption, positions and synonyms drawn too, all from a ``torch.Generator`` seeded
    with ``seed`` (same captions and seed, same output). Synonyms come from ``eda_synonyms`` in
    ``captions.yaml`` (WordNet in the paper). The result is the edited words, lower-case, joined by single
    spaces (punctuation dropped, as the word tokenizer drops it anyway)."""
    if isinstance(captions, str):
        raise ValueError("captions: expected a list of strings, got one string")
    table = load_captions()["eda_synonyms"]
    n = len(captions)
    g = torch.Generator().manual_seed(int(seed))
    ops = torch.randint(len(EDA_OPS), (n,), generator=g).tolist()
    draws = torch.rand(n, 3, generator=g, dtype=torch.float64).tolist()
    return [" ".join(_eda_one(split_words(c), op, u, table)) for c, op, u in zip(captions, ops, draws)]
