"""Making hopper-medium (1M transitions by default) from the shipped medium actor, against
MuJoCo's own stepping time for the same number of steps (the floor: env.step with the same
actions, no policy, no bookkeeping).

    python benchmarks/make_speed.py [--transitions 1000000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import report

from dtmerge.data.make import make_trajectories
from dtmerge.envs import get_task


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transitions", type=int, default=1_000_000)
    args = ap.parse_args()
    task = get_task("hopper")
    t = time.perf_counter()
    traj = make_trajectories(task, "medium", args.transitions, seed=0, progress=False)
    t_make = time.perf_counter() - t
    env = task.make_env()
    env.reset(seed=0)
    t_mujoco = 0.0
    for chunk in np.array_split(traj.actions, max(1, len(traj) // 10_000)):
        t = time.perf_counter()
        for a in chunk:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        t_mujoco += time.perf_counter() - t
    report("make_speed", {
        "what": f"hopper-medium, {args.transitions:,} transitions from the shipped actor (16 vector envs)",
        "make_seconds": t_make, "transitions_per_s": args.transitions / t_make,
        "mujoco_env_step_seconds": t_mujoco, "overhead_over_mujoco": t_make / t_mujoco,
        "target": "1M transitions in under 300 s"})


if __name__ == "__main__":
    main()
