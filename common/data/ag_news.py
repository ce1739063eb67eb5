"""AG News: ``ag_news/test.csv`` (7,600 rows, no header: label 1-4, title, description),
``ag_news/train_sample_8000.csv`` (8,000 rows, header ``label,content``, content = description only) and, once
fetched (``python -m common.data fetch ag_news``), the full ``ag_news/train.csv`` (120,000 rows, as test.csv)."""
import csv
import html
import re

import numpy as np

from .files import data_file, decoding

AG_NEWS_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
_OFFICIAL_FILES = {"test": "ag_news/test.csv", "train_full": "ag_news/train.csv"}  # no header: label, title, description

# An HTML entity whose "&" the source replaced by a space, e.g. "doesn #39;t", "Johnson  amp; Johnson".
_BROKEN_ENTITY = re.compile(r"(?<!&) ?(#\d+|quot|amp|lt|gt|nbsp|hellip|mdash|rsquo|eacute);")
# Markup left after unescaping, e.g. "<b>", "</A>", '<FONT face="...">'; not tickers such as "<AAPL.O>".
_HTML_TAG = re.compile(r"</?(?:a|b|i|p|br|em|font|img|meta|nobr|strong|title|cite)\b[^<>]*>", re.IGNORECASE)


def normalize_ag_news_text(text: str) -> str:
    """Undo the AG News text quirks; case and punctuation are kept.

    1. HTML entities, including those whose ``&`` became a space: ``"doesn #39;t"`` -> ``"doesn't"``,
       ``" #36;10"`` -> ``"$10"``, ``"J amp;J"`` -> ``"J&J"``, ``" quot;x quot;"`` -> ``'"x"'``, ``"&lt;"`` -> ``"<"``;
       Windows-1252 codes map as browsers do (``#151;`` -> an em dash).
    2. HTML tags (``<b>``, ``</A>``, ``<font ...>``, ...) become spaces; tickers like ``<AAPL.O>`` stay.
    3. A backslash (the source's line break, e.g. ``"oil\\pipeline"``) becomes a space.
    4. Whitespace runs (incl. no-break spaces) become one space; ends are stripped.
    """
    text = html.unescape(_BROKEN_ENTITY.sub(r"&\1;", text))
    text = _HTML_TAG.sub(" ", text).replace("\\", " ")
    return " ".join(text.split())


def load_ag_news(
    split: str = "train",
    data_dir=None,
    normalize: bool = True,
    drop_test_overlap: bool = True,
    verify: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """AG News descriptions (titles are not returned: the train sample has none).

    Args:
        split: ``"test"`` (official test split, 1,900 per class), ``"train"`` (8,000-row sample of the official
            training split, 2,000 per class) or ``"train_full"`` (the official training split, 30,000 per class).
        normalize: apply ``normalize_ag_news_text`` to every description.
        drop_test_overlap: for the train splits, drop the descriptions that also occur in the test split, compared
            after the same normalization: the 16 verbatim duplicates (7,984 rows left), and with ``normalize``
            one more that differs from its test copy only in quirks (``\\`` vs a space, ``'`` vs `` #39;``):
            7,983 rows left (from ``"train_full"``, whatever occurs in the test split).

    Returns:
        labels: int64 [N], 0-3 in the order of ``AG_NEWS_CLASSES`` (files store 1-4).
        texts: list of N str.
    """
    if split in _OFFICIAL_FILES:
        labels, texts = _read_official(_OFFICIAL_FILES[split], data_dir, verify)
    elif split == "train":
        labels, texts = _read_train_sample(data_dir, verify)
    else:
        raise ValueError(f"split must be 'train', 'train_full' or 'test', got {split!r}")
    if normalize:
        texts = [normalize_ag_news_text(text) for text in texts]
    if split != "test" and drop_test_overlap:
        test_texts = set(load_ag_news("test", data_dir, normalize, verify=verify)[1])
        keep = [i for i, text in enumerate(texts) if text not in test_texts]
        labels, texts = [labels[i] for i in keep], [texts[i] for i in keep]
    return np.array(labels, np.int64), texts


def _read_official(name: str, data_dir, verify: bool) -> tuple[list[int], list[str]]:
    path = data_file(name, data_dir, verify)
    with decoding(path), open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return [int(label) - 1 for label, _title, _description in rows], [row[2] for row in rows]


def _read_train_sample(data_dir, verify: bool) -> tuple[list[int], list[str]]:
    path = data_file("ag_news/train_sample_8000.csv", data_dir, verify)
    with decoding(path), open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [int(row["label"]) - 1 for row in rows], [row["content"] for row in rows]
