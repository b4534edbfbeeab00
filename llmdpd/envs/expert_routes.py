"""Scripted experts that reach a task's goal by another route than Meta-World's own.

Meta-World's push-wall expert carries the puck round the left end of the wall (the wall spans x in
[-0.02, 0.22] at y 0.75): while the puck is in front of the wall it moves the hand toward -x until the puck
is past x = -0.1, then forward, then to the goal. Its `right` route is the same expert moving toward +x until
the puck is past x = 0.3, as far beyond the wall's right end as the original passes its left end. Data with
both routes ask, at the wall, for one of two opposite actions; their mean (no motion along x) leaves the puck
against the wall, so a policy that averages the routes fails where either route succeeds.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from llmdpd.envs.metaworld import HAND, OBJECT, policy_function, scripted_expert

# Each task's routes; the first is Meta-World's own expert.
ROUTES: dict[str, tuple[str, ...]] = {"push-wall-v3": ("left", "right")}
# Each such task's wall: its plane y and its ends in x (Meta-World's push-wall: a box 0.24 wide at x 0.1, y 0.75).
WALLS: dict[str, tuple[float, float, float]] = {"push-wall-v3": (0.75, -0.02, 0.22)}


def route_names(task: str) -> tuple[str, ...]:
    """The routes `task`'s expert can take (one, Meta-World's own, for a task not in `ROUTES`)."""
    return ROUTES.get(task, ("own",))


def route_expert(task: str, route: str) -> Callable[[np.ndarray], np.ndarray]:
    """The scripted expert of `task` taking `route` (one of `route_names(task)`), as obs -> action."""
    names = route_names(task)
    if route not in names:
        raise ValueError(f"Task '{task}' has no route '{route}'; its routes: {list(names)}")
    if route == names[0]:
        return scripted_expert(task)
    return policy_function(_push_wall_right_policy())


def where_routes_part(task: str, observations: np.ndarray) -> np.ndarray:
    """Which observations [n, 39] of `task` are states where its routes act differently: the object held in front
    of the wall (within 0.1 of its plane, no farther out than the routes' detours go), the hand on it."""
    wall_y, left_end, right_end = WALLS[task]
    obj, hand = observations[:, OBJECT], observations[:, HAND]
    in_front = (obj[:, 1] >= wall_y - 0.1) & (obj[:, 1] <= wall_y) & (obj[:, 0] >= left_end - 0.08)
    in_front &= obj[:, 0] <= right_end + 0.08
    return in_front & (np.linalg.norm(hand - obj, axis=1) < 0.05)


def route_taken(task: str, observations: np.ndarray) -> str:
    """The route of one episode [T+1, 39] of `task`: the side of the wall where its object first went past the
    wall's plane (the first route is the left end's), or "none" if it never did."""
    wall_y, left_end, right_end = WALLS[task]
    beyond = np.flatnonzero(observations[:, OBJECT][:, 1] > wall_y + 0.01)  # the wall is 0.02 thick
    if not len(beyond):
        return "none"
    left, right = ROUTES[task]
    return left if observations[beyond[0], OBJECT][0] < (left_end + right_end) / 2 else right


def _push_wall_right_target(o_d: dict) -> np.ndarray:
    """Meta-World's push-wall target point with the detour round the wall's right end."""
    hand = o_d["hand_pos"]
    puck = o_d["obj_pos"] + np.array([-0.005, 0.0, 0.0])
    if np.linalg.norm(hand[:2] - puck[:2]) > 0.02:  # above the puck
        return puck + np.array([0.0, 0.0, 0.2])
    if abs(hand[2] - puck[2]) > 0.04:  # down onto it
        return puck + np.array([0.0, 0.0, 0.03])
    if -0.1 <= puck[0] <= 0.3 and 0.65 <= puck[1] <= 0.75:  # in front of the wall: to the right
        return hand + np.array([1.0, 0.0, 0.0])
    if (-0.15 < puck[0] < 0.05 or 0.15 < puck[0] < 0.35) and 0.695 <= puck[1] <= 0.755:  # beside it: forward
        return hand + np.array([0.0, 1.0, 0.0])
    return o_d["goal_pos"]


def _push_wall_right_policy():
    """Meta-World's push-wall policy with the right route's target (imported here: Meta-World's policies load
    lazily, as in `scripted_expert`)."""
    from metaworld.policies.sawyer_push_wall_v3_policy import SawyerPushWallV3Policy

    class PushWallRightPolicy(SawyerPushWallV3Policy):
        _desired_pos = staticmethod(_push_wall_right_target)

    return PushWallRightPolicy()
