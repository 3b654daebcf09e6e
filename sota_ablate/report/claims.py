"""What fastbook chapter 7 says about how many epochs a technique needs, as data: the quote, where it is, and
which measurement answers it (``report/sweep_section`` puts the measured answer next to it in a budget sweep's
report, for the techniques the sweep has).

``check`` says what answers the statement: ``("crossover",)`` the arm's crossover budget, ``("below", n)`` what
the sweep measured below ``n`` epochs (and from ``n`` on, if it reaches it), ``("at", n)`` the difference at ``n``
epochs (or the sweep's smallest budget when it has no ``n``).
"""

from __future__ import annotations

from dataclasses import dataclass

MIXUP_SECTION = "fastbook chapter 7, *Mixup*"
LABEL_SMOOTHING_SECTION = "fastbook chapter 7, *Label Smoothing*"
QUESTIONNAIRE = "fastbook chapter 7, *Questionnaire*, question 10"


@dataclass(frozen=True)
class Claim:
    technique: str
    quote: str
    source: str
    check: tuple[str, ...] | tuple[str, int]


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "mixup",
        "Mixup requires far more epochs to train to get better accuracy, compared to other augmentation approaches "
        "we've seen.",
        MIXUP_SECTION,
        ("crossover",),
    ),
    Claim(
        "mixup",
        "the leaderboard in the Imagenette repo is showing that Mixup is used for all leading results for trainings "
        "of >80 epochs, and for fewer epochs Mixup is not being used.",
        MIXUP_SECTION,
        ("below", 80),
    ),
    Claim(
        "mixup",
        "Why does training with Mixup for five epochs end up worse than training without Mixup?",
        QUESTIONNAIRE,
        ("at", 5),
    ),
    Claim(
        "label_smoothing",
        "Like with Mixup, you won't generally see significant improvements from label smoothing until you train more "
        "epochs. Try it yourself and see: how many epochs do you have to train before label smoothing shows an "
        "improvement?",
        LABEL_SMOOTHING_SECTION,
        ("crossover",),
    ),
)


def claims_for(technique: str) -> list[Claim]:
    """The chapter's statements about ``technique``'s number of epochs (none for most techniques)."""
    return [c for c in CLAIMS if c.technique == technique]
