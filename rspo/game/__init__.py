"""Exact tabular preference games: equilibria, duality gaps and self-play dynamics.

Used to check the method's claims where everything is computable (docs/game.md).
"""

from .dynamics import selfplay, time_average
from .equilibrium import best_response, exploitability, regularized_nash, resolve_regularizer
from .games import (
    GAMES,
    bt_game,
    make_game,
    random_game,
    rps_game,
    validate_distribution,
    validate_preference_matrix,
)
from .run import make_ref, run_game

__all__ = [
    "GAMES",
    "best_response",
    "bt_game",
    "exploitability",
    "make_game",
    "make_ref",
    "random_game",
    "regularized_nash",
    "resolve_regularizer",
    "rps_game",
    "run_game",
    "selfplay",
    "time_average",
    "validate_distribution",
    "validate_preference_matrix",
]
