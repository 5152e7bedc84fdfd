"""DTs trained together (`dtmerge.train.many`), as a rewrite of the experiments' graph.

DT trainings of one task that differ only in seed (and the steps they keep) become one `dt-batch`
artifact that trains up to N of them at once, and one `batched-dt` artifact per model holding its
run; everything made from them is re-keyed. A batched model's numbers differ from a single run's
in the last bits, so it never shares a key with one: its key holds the batch it came from. The
rewrite depends only on the experiments' nodes and N, so a report rebuilds the same graph.
"""

from __future__ import annotations

import json

from dtmerge.experiments.store import Node
from dtmerge.train.many import PER_MODEL

EQ5_FIELDS = ("preset", "cos_weight", "l2_weight", "lm_weight", "freeze")  # trained alone: not batchable


def batchable(node: Node) -> bool:
    """A random-init single-task DT without Eq. 5 terms or frozen parts."""
    return node.kind == "dt" and set(node.deps) == {"data"} and not any(node.spec.get(k) for k in EQ5_FIELDS)


def batch_trainings(graphs: list[dict[str, Node]], most: int) -> list[dict[str, Node]]:
    """`graphs` (each experiment's nodes) with their batchable DTs trained up to `most` at a time;
    groups are formed in the order the DTs first appear, so the same graphs give the same groups."""
    if most < 2:
        return graphs
    groups: dict[str, list[Node]] = {}
    seen: set[str] = set()
    for graph in graphs:
        for target in graph.values():
            for node in target.walk():
                if node.key in seen or not batchable(node):
                    continue
                seen.add(node.key)
                shared = {k: v for k, v in node.spec.items() if k not in PER_MODEL}
                groups.setdefault(json.dumps([shared, node.deps["data"].spec["task"]], sort_keys=True), []).append(node)
    replaced: dict[str, Node] = {}
    for members in groups.values():
        for start in range(0, len(members), most):
            chunk = members[start:start + most]
            if len(chunk) < 2:
                continue
            batch = Node("dt-batch", {"runs": [m.spec for m in chunk]},
                         {f"data{i}": m.deps["data"] for i, m in enumerate(chunk)})
            for i, m in enumerate(chunk):
                replaced[m.key] = Node("batched-dt", {"index": i, "batched": len(chunk)}, {"batch": batch})
    memo: dict[str, Node] = {}

    def rewrite(node: Node) -> Node:
        if node.key not in memo:
            if node.key in replaced:
                memo[node.key] = replaced[node.key]
            else:
                deps = {name: rewrite(dep) for name, dep in node.deps.items()}
                same = all(deps[name] is dep for name, dep in node.deps.items())
                memo[node.key] = node if same else Node(node.kind, node.spec, deps)
        return memo[node.key]

    return [{name: rewrite(node) for name, node in graph.items()} for graph in graphs]
