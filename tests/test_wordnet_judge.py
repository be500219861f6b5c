"""The WordNet judge's rules (negrefine_ray/judges/wordnet.py), each on hand-picked WordNet 3.0 words
whose answer flips if the rule is dropped or loosened: lookup of cleaned labels, the first-sense
proper-noun rule, hypernyms of every sense, the restricted compound-head rule, and how ID class
names with alternatives and parentheses are read."""

from __future__ import annotations

from typing import Any

import pytest

from negrefine_ray.core.negfilter import PROMPT_SETS, proper_question, subcategory_questions
from negrefine_ray.data.wordnet import WordNet
from negrefine_ray.judges.wordnet import RULES_VERSION, WordNetJudge, split_id_label

pytest_plugins = ("conftest_wordnet",)
PROMPTS = PROMPT_SETS["negrefine"]


@pytest.fixture(scope="module")
def wn(wordnet: WordNet) -> Any:
    return wordnet.reader


@pytest.fixture(scope="module")
def judge(wn: Any) -> WordNetJudge:
    return WordNetJudge(wn)


@pytest.fixture(scope="module")
def no_head(wn: Any) -> WordNetJudge:
    return WordNetJudge(wn, compound_head=False)


def ask(judge: WordNetJudge, label: str, id_label: str = "") -> bool | None:
    question = proper_question(label) if not id_label else subcategory_questions(label, [id_label])[0]
    return judge.answer([question], PROMPTS)[0].yes


# ---------------------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("label", "synset"),
    [
        ("shepherds purse", "shepherd's_purse.n.01"),  # NegFilter's cleaning dropped the apostrophe
        ("st elias range", "st._elias_range.n.01"),  # ... and the full stop
        ("biosafety level ", "biosafety_level_2.n.01"),  # ... and the digit, leaving a trailing space
    ],
)
def test_a_cleaned_label_finds_the_lemmas_it_came_from(
    judge: WordNetJudge, wn: Any, label: str, synset: str
) -> None:
    assert wn.synset(synset) in judge.senses(label)


def test_cleaned_labels_get_answers(judge: WordNetJudge) -> None:
    assert ask(judge, "adams peak") is True  # Adam's Peak, an instance of mountain peak
    assert ask(judge, "shepherds purse", "crucifer") is True


# ----------------------------------------------------------------------------------- proper noun


@pytest.mark.parametrize(
    ("label", "proper"),
    [
        ("etna", True),  # 1st sense the volcano (an instance); 2nd a Bunsen burner: "all senses" says no
        ("paris", True),  # 1st sense the capital; a plant genus Paris too
        ("astrakhan", False),  # 1st sense the fur; the city is the 2nd: "any sense" would say yes
        ("daisy", False),
        ("gooey landscape", False),  # not a WordNet noun
    ],
)
def test_proper_noun_is_an_instance_first_sense(judge: WordNetJudge, label: str, proper: bool) -> None:
    assert ask(judge, label) is proper


def test_capitalized_rule_reads_every_lemma_of_every_sense(wn: Any) -> None:
    judge = WordNetJudge(wn, proper_rule="capitalized")
    assert ask(judge, "tench") is True  # its synset's lemma Tinca tinca
    assert ask(judge, "astrakhan") is True  # the city Astrakhan
    assert ask(judge, "daisy") is False


# ----------------------------------------------------------------------------------- subcategory


@pytest.mark.parametrize(
    ("label", "id_label", "yes"),
    [
        ("goldfish", "cyprinid", True),
        ("dipper", "duck", True),  # only its 4th sense, the bufflehead, is a duck
        ("weeping tree broom", "broom", True),  # under the ID label's 2nd sense, the shrub
        ("asama", "mountain", True),  # through an instance hypernym (volcano)
        ("goldfish", "duck", False),
    ],
)
def test_hypernyms_of_every_sense(no_head: WordNetJudge, label: str, id_label: str, yes: bool) -> None:
    assert ask(no_head, label, id_label) is yes


@pytest.mark.parametrize(
    ("label", "id_label", "yes"),
    [
        ("african daisy", "daisy", True),  # WordNet files it under flower, beside daisy
        ("purple daisy", "daisy", True),  # not in WordNet: nothing contradicts the head
        ("indian paintbrush", "paintbrush", False),  # WordNet: a plant, nowhere near the brush
        ("squirrel corn", "corn", False),  # WordNet: an herb, not beside corn the cereal
        ("cliffs of the valley", "valley", False),  # the head of "X of Y" is X, not Y
        ("box kite", "kite (bird of prey)", False),  # the head is the toy kite, not the bird
    ],
)
def test_compound_head(
    judge: WordNetJudge, no_head: WordNetJudge, label: str, id_label: str, yes: bool
) -> None:
    assert ask(judge, label, id_label) is yes
    assert ask(no_head, label, id_label) is False  # so the yes comes from the compound-head rule


def test_adjective_phrases_answer_no(judge: WordNetJudge) -> None:
    """NegRefine's LLM said yes to these two; WordNet has no noun to reason from."""
    assert ask(judge, "wildcat pattern", "tabby cat") is False
    assert ask(judge, "alpestrine scene", "mountain") is False


# -------------------------------------------------------------------------------- ID class names


def test_split_id_label() -> None:
    assert split_id_label("kite (bird of prey)") == (["kite"], ["bird of prey"])
    assert split_id_label("product packet / packaging") == (["product packet", "packaging"], [])
    assert split_id_label("military hat (bearskin or shako)") == (["military hat"], ["bearskin", "shako"])
    assert split_id_label("Granny Smith apple") == (["granny smith apple"], [])


def test_alternatives_are_asked_each(no_head: WordNetJudge) -> None:
    assert ask(no_head, "sleigh bell", "bell or wind chime") is True
    assert ask(no_head, "iron lung", "gas mask or respirator") is True
    assert ask(no_head, "lederhosen", "swim trunks / shorts") is True


def test_elliptic_coordination(judge: WordNetJudge) -> None:
    assert judge.id_senses("vaulted or arched ceiling")[1] == ["vaulted ceiling", "arched ceiling"]
    assert judge.id_senses("bell or wind chime")[1] == ["bell", "wind chime"]  # "bell" is a noun


def test_parenthesis_disambiguates_or_adds(judge: WordNetJudge, wn: Any) -> None:
    assert judge.id_senses("kite (bird of prey)")[0] == {wn.synset("kite.n.04")}
    assert judge.id_senses("ram (adult male sheep)")[0] == {wn.synset("ram.n.05")}  # via "sheep"
    assert ask(judge, "black kite", "kite (bird of prey)") is True
    # cherimoya is a custard apple, so the note only disambiguates: a sweetsop is no cherimoya
    assert ask(judge, "sweetsop", "cherimoya (custard apple)") is False
    # a note that is no hypernym of the head names alternatives
    assert judge.id_senses("military hat (bearskin or shako)")[1] == ["military hat", "bearskin", "shako"]


# ---------------------------------------------------------------------------------------- identity


def test_identity_names_every_rule_setting(wn: Any) -> None:
    identity = WordNetJudge(wn).identity()
    assert identity["rules"] == RULES_VERSION and identity["wordnet"] == "3.0"
    variants = [WordNetJudge(wn, proper_rule="capitalized"), WordNetJudge(wn, compound_head=False)]
    assert all(v.identity() != identity for v in variants)
