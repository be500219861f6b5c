"""Prompt templates of NegLabel, CSP, NegRefine, DNM and InterNeg, verbatim from methods.md (1.2, 2.2,
5.3, Appendix A), in a name registry, plus CSP's random "superclass" suffix draw for adjectives (2.3).

Templates are data: every string is quoted exactly as the reference code has it, including trailing
periods (they change CLIP's tokens) and capitalisation (it does not: the tokenizer lower-cases).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from negrefine_ray.errors import unknown_name

# The 80 OpenAI ImageNet templates (Appendix A): NegLabel's indices 0-79 and InterNeg's "full".
IMAGENET80: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.",
    "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.",
    "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.",
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)  # fmt: skip

# NegLabel's `prompt_templates` (1.2): the 80 above, then indices 80-90; index 85 is 'the nice {}'.
NEGLABEL91: tuple[str, ...] = (
    *IMAGENET80,
    "a photo with a {}", "a good photo with the {}", "a photo with the nice {}", "a photo with nice {}",
    "a good photo with the nice {}", "the nice {}", "the good {}", "{}", "the {}",
    "a photo of the great {}.", "hello world {}",
)  # fmt: skip

# CSP / NegRefine (2.2).
CSP_NOUN8: tuple[str, ...] = (
    "a close-up photo of the nice {}.", "a photo with the nice {}.", "a good photo with the nice {}.",
    "a photo of the nice {}.", "{}", "the {}", "the good {}", "the nice {}",
)  # fmt: skip
CSP_ADJ4: tuple[str, ...] = ("{}", "a nice photo of {}", "a good photo of {}", "a close-up photo of {}")
CSP_SUFFIX14: tuple[str, ...] = (
    "{} environment", "{} space", "{} object", "{} scene", "{} place", "{} item", "{} area",
    "{} view", "{} thing", "{} pattern", "{} structure", "{} landscape", "{} vista", "{} creature",
)  # fmt: skip
CSP_SKETCH10: tuple[str, ...] = ("a sketch of a {}", "a sketch of the {}", *CSP_NOUN8)

# InterNeg's `get_templates` options (5.3); "nice" is its noun/ID template.
INTERNEG_TIP: tuple[str, ...] = (
    "a bad photo of the {}.", "a {} in a video game.", "a origami {}.", "a photo of the small {}.",
    "art of the {}.", "a photo of the large {}.", "itap of a {}.",
)  # fmt: skip


class _TemplateRegistry(dict[str, tuple[str, ...]]):
    """A dict whose missing keys raise the project's unknown-name error (lists names, suggests one)."""

    def __missing__(self, key: str) -> tuple[str, ...]:
        raise unknown_name("template set", key, self.keys())


TEMPLATE_SETS: dict[str, tuple[str, ...]] = _TemplateRegistry(
    {
        "imagenet80": IMAGENET80,
        "neglabel91": NEGLABEL91,
        "the-nice": ("the nice {}",),  # NegLabel/DNM ID classes and nouns (index 85)
        "neglabel-adj": ("This is a {} photo",),  # NegLabel/DNM adjectives (hard-coded)
        # NegLabel's imported but unused `adj_prompts_templetes` (1.2), for experiments.
        "neglabel-adj5": (
            "This is a {} photo",
            "a photo with {} content",
            "a {} photo",
            "a photo with {} pattern",
            "a photo with {} context",
        ),
        "csp-noun8": CSP_NOUN8,
        "csp-adj4": CSP_ADJ4,
        "csp-suffix14": CSP_SUFFIX14,
        "csp-sketch10": CSP_SKETCH10,
        "interneg-nice": ("The nice {}.",),
        "interneg-adj": ("This is a {} photo.",),
        "bare": ("{}",),
        "mcm": ("a photo of a {}",),  # MCM's ID prompt (Appendix B)
        "interneg-simple": ("a photo of a {}.",),
        "interneg-tip": INTERNEG_TIP,
        "interneg-vanilla": ("{}.",),
        "interneg-good": ("a good photo of the {}.",),
        "interneg-bad": ("a bad photo of the {}.",),
        "interneg-small": ("a photo of the small {}.",),
        "interneg-large": ("a photo of the large {}.",),
        "interneg-full": IMAGENET80,
    }
)


def get_templates(name: str) -> tuple[str, ...]:
    """The template set registered as `name`; an unknown name raises NegRefineError with suggestions."""
    return TEMPLATE_SETS[name]


def apply_templates(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Label-major prompts: row `i * len(templates) + t` is `templates[t].format(labels[i])`.

    This is the layout `clip.text.ensemble` expects.
    """
    return [t.format(label) for label in labels for t in templates]


def csp_phrases(adjectives: Sequence[str], seed: int) -> list[str]:
    """CSP's adjective phrases (2.3): one `random.choice(csp_suffix14)` per adjective, in order.

    The references call `random.seed(seed)` and then the module-level `random.choice` once per
    adjective; a private `random.Random(seed)` draws the same sequence (same Mersenne Twister seeding
    and `choice` algorithm) without touching the caller's global random state. E.g. seed 0 turns the
    adjectives into phrases such as 'gooey landscape'.
    """
    rng = random.Random(seed)
    return [rng.choice(CSP_SUFFIX14).format(adj) for adj in adjectives]
