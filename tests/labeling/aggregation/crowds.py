"""Simulated crowds shared by the method tests (module-level cache keeps the suite fast)."""

from functools import cache

from labeling.aggregation.simulation import SimulatedCrowd, simulate_crowd

HARD_MIX = "accurate:4,noisy:3,class_biased:2,spammer:3,adversarial:2"


@cache
def hard_crowd() -> SimulatedCrowd:
    """600 items, 3 classes, 14 workers of every archetype, 7 votes per item."""
    return simulate_crowd(600, 3, HARD_MIX, votes_per_item=7, seed=1)


@cache
def honest_crowd() -> SimulatedCrowd:
    """Only accurate, noisy and spamming workers (what one-coin, GLAD and MACE model)."""
    return simulate_crowd(500, 3, "accurate:4,noisy:4,spammer:3", votes_per_item=5, seed=2)


def accuracy(posteriors, truth) -> float:
    return float((posteriors.argmax(axis=1) == truth).mean())
