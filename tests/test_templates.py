"""Template sets are the references' strings, and CSP's suffix draw replays `random.seed; random.choice`."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from negrefine_ray.core.templates import (
    CSP_SUFFIX14,
    TEMPLATE_SETS,
    apply_templates,
    csp_phrases,
    get_templates,
)
from negrefine_ray.errors import NegRefineError

SPEC = Path("/work/shared/spec/methods.md")


def test_counts_and_key_entries() -> None:
    assert len(TEMPLATE_SETS["imagenet80"]) == 80
    assert len(TEMPLATE_SETS["neglabel91"]) == 91
    assert len(TEMPLATE_SETS["csp-suffix14"]) == 14
    assert len(TEMPLATE_SETS["csp-noun8"]) == 8
    assert len(TEMPLATE_SETS["csp-adj4"]) == 4
    assert len(TEMPLATE_SETS["csp-sketch10"]) == 10
    assert len(TEMPLATE_SETS["interneg-tip"]) == 7
    assert TEMPLATE_SETS["neglabel91"][85] == "the nice {}"
    assert TEMPLATE_SETS["neglabel91"][87] == "{}"
    assert TEMPLATE_SETS["neglabel91"][90] == "hello world {}"
    assert TEMPLATE_SETS["neglabel91"][:80] == TEMPLATE_SETS["imagenet80"] == TEMPLATE_SETS["interneg-full"]
    assert TEMPLATE_SETS["csp-sketch10"][2:] == TEMPLATE_SETS["csp-noun8"]
    assert TEMPLATE_SETS["imagenet80"][0] == "a bad photo of a {}."
    assert TEMPLATE_SETS["imagenet80"][79] == "a tattoo of the {}."
    for name, templates in TEMPLATE_SETS.items():
        assert all(t.count("{}") == 1 for t in templates), name


def test_imagenet80_matches_open_clip_and_the_spec_appendix() -> None:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert tuple(f("{}") for f in OPENAI_IMAGENET_TEMPLATES) == TEMPLATE_SETS["imagenet80"]
    if SPEC.is_file():
        appendix = SPEC.read_text().split("## Appendix A")[1].split("## Appendix B")[0]
        quoted = tuple(t for _, t in re.findall(r"(\d+) '([^']*)'", appendix))
        assert quoted == TEMPLATE_SETS["imagenet80"]


def test_spec_examples() -> None:
    assert apply_templates(["maleficent landscape"], get_templates("csp-adj4"))[1] == (
        "a nice photo of maleficent landscape"
    )
    assert get_templates("interneg-nice")[0].format("tench") == "The nice tench."
    assert get_templates("neglabel-adj")[0].format("gooey") == "This is a gooey photo"
    assert "{} landscape" in CSP_SUFFIX14 and "{} creature" in CSP_SUFFIX14


def test_apply_templates_is_label_major() -> None:
    assert apply_templates(["a", "b"], ["x {}", "{} y"]) == ["x a", "a y", "x b", "b y"]


def test_unknown_template_set_suggests_a_name() -> None:
    with pytest.raises(NegRefineError, match="Did you mean 'csp-noun8'"):
        get_templates("csp-noun")
    with pytest.raises(NegRefineError, match="Unknown template set"):
        TEMPLATE_SETS["nope"]


def test_private_rng_draws_like_module_level_random() -> None:
    adjectives = [f"adj{i}" for i in range(500)]
    saved = random.getstate()
    try:
        for seed in (0, 1, 7):
            random.seed(seed)
            expected = [random.choice(CSP_SUFFIX14).format(a) for a in adjectives]
            assert csp_phrases(adjectives, seed) == expected
    finally:
        random.setstate(saved)


def test_csp_phrases_leave_global_random_state_alone() -> None:
    state = random.getstate()
    phrases = csp_phrases(["gooey", "rutted"], 0)
    assert random.getstate() == state
    assert len(phrases) == 2 and phrases[0].startswith("gooey ") and phrases[1].startswith("rutted ")
    assert csp_phrases(["gooey", "rutted"], 0) == phrases
