"""Classic recommenders behind one interface: MostPop, Markov chain, ItemKNN, implicit MF, SASRec."""

from recgpt.baselines.base import Interactions, Recommender

__all__ = ["Interactions", "Recommender"]
