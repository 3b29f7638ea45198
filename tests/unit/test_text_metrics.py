"""ROUGE's tokenizers (issue #20, item 6): the standard one of the literature keeps ASCII only;
the Unicode-aware one counts every script, and equals the standard one on ASCII text."""

from __future__ import annotations

import pytest

from at_probe.xsum import metrics as text_metrics
from at_probe.xsum.metrics import rouge

NON_LATIN = {"greek": "Η γάτα κάθεται στο χαλί της κουζίνας.",
             "russian": "Кошка сидит на ковре в кухне.",
             "chinese": "猫坐在厨房的垫子上。"}


@pytest.mark.parametrize("language", NON_LATIN)
def test_the_default_tokenizer_drops_non_ascii_letters_as_documented(language):
    x = NON_LATIN[language]
    assert rouge(x, x) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}  # rouge-score as published
    assert rouge("The café reopened", "The caf reopened")["rouge1"] == 1.0


@pytest.mark.parametrize("language", NON_LATIN)
def test_the_unicode_tokenizer_scores_text_against_itself_as_one(language):
    x = NON_LATIN[language]
    assert rouge(x, x, tokenizer="unicode") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}


def test_the_unicode_tokenizer_tells_accented_words_apart():
    r = rouge("The café reopened", "The caf reopened", tokenizer="unicode")
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rouge2"] == 0.0


def test_the_unicode_tokenizer_counts_chinese_by_character():
    r = rouge("猫坐在垫子上", "狗坐在垫子上", tokenizer="unicode")
    assert r["rouge1"] == pytest.approx(5 / 6) and r["rouge2"] == pytest.approx(4 / 5)


def test_the_unicode_rule():
    tokens = text_metrics.unicode_tokens
    assert tokens("The Café, 中文! snake_case 3.5") == ["the", "café", "中", "文", "snake", "case", "3", "5"]
    assert tokens("cafe\u0301 ＦＵＬＬ Straße") == ["café", "full", "strasse"]  # NFKC, case folding
    assert tokens("カタカナとひらがな") == list("カタカナとひらがな")
    assert tokens("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # combining marks stay in their word
    assert tokens("ภาษาไทย") == ["ภ", "า", "ษ", "า", "ไ", "ท", "ย"]


@pytest.mark.parametrize("pair", [
    ("The council votes to buy the harbour", "Council voted to buy harbour"),
    ("Running runners ran; it's 2024's best_run!", "The runner's runs were running in 2024."),
    ("A-B testing (v2.0) costs $3,500 -- really?", "AB tests cost 3500 dollars"),
])
def test_the_unicode_tokenizer_equals_the_default_on_ascii_text(pair):
    assert rouge(*pair, tokenizer="unicode") == rouge(*pair)


def test_an_unknown_tokenizer_is_refused():
    with pytest.raises(ValueError, match="unknown ROUGE tokenizer 'spacy'"):
        rouge("a", "a", tokenizer="spacy")
