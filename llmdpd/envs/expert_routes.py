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

# Each task's routes; the first is Meta-World's own expert (None), the others build their Meta-World policy.
_ROUTE_POLICIES: dict[str, dict[str, Callable | None]] = {
    "push-wall-v3": {"left": None, "right": lambda: _push_wall_right_policy()},
}
ROUTES: dict[str, tuple[str, ...]] = {task: tuple(policies) for task, policies in _ROUTE_POLICIES.items()}
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
    build = _ROUTE_POLICIES.get(task, {}).get(route)
    return scripted_expert(task) if build is None else policy_function(build())


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
    """Meta-World's push-wall target point, its detour toward -x in front of the wall turned toward +x (it then
    holds until the puck is past x = 0.3, where Meta-World's band in front of the wall ends)."""
    from metaworld.policies.sawyer_push_wall_v3_policy import SawyerPushWallV3Policy

    target = SawyerPushWallV3Policy._desired_pos(o_d)
    left = o_d["hand_pos"] + np.array([-1.0, 0.0, 0.0])
    return o_d["hand_pos"] + np.array([1.0, 0.0, 0.0]) if np.array_equal(target, left) else target


def _push_wall_right_policy():
    """Meta-World's push-wall policy with the right route's target (imported here: Meta-World's policies load
    lazily, as in `scripted_expert`)."""
    from metaworld.policies.sawyer_push_wall_v3_policy import SawyerPushWallV3Policy

    class PushWallRightPolicy(SawyerPushWallV3Policy):
        _desired_pos = staticmethod(_push_wall_right_target)

    return PushWallRightPolicy()
