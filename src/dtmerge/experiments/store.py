"""One artifact store for every experiment.

An artifact (a dataset, a trained DT, a Fisher, a merge, an MFF bundle, an evaluation) is a
`Node`: its kind, its spec (every setting, seed included) and the nodes it is made from. Its key
is the SHA-256 of all of that plus the code version (and the kind's revision, bumped when its maker
starts computing something else), so two experiments that need the same model
get the same key and share one directory, `<store>/<kind>/<key>/`. A node is done when
`artifact.json` (written last, atomically) is there; everything inside is written atomically too,
and a training node trains with checkpoints, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from dtmerge import __version__
from dtmerge.atomic import write_json
from dtmerge.errors import DtmergeError

STORE_FORMAT = "dtmerge.artifact/1"
# A kind listed here was changed after artifacts of it were made: its keys (only) move on, so the
# old artifacts are made again. search 2: proposals independent of stops (seeded TPE, replayed CMA-ES);
# dt 2: starts from per-task init seeds with GPT-2-style embeddings, and records the loss curve.
REVISIONS = {"search": 2, "dt": 2}


@dataclass(frozen=True, eq=False)
class Node:
    kind: str
    spec: dict
    deps: dict[str, Node] = field(default_factory=dict)

    @cached_property
    def key(self) -> str:
        ident = {"format": STORE_FORMAT, "version": __version__, "kind": self.kind, "spec": self.spec,
                 "deps": {name: dep.key for name, dep in sorted(self.deps.items())}}
        if self.kind in REVISIONS:
            ident["revision"] = REVISIONS[self.kind]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]

    def walk(self) -> list[Node]:
        """This node and everything it is made from, each once, inputs before what uses them."""
        seen: dict[str, Node] = {}

        def visit(node: Node):
            if node.key in seen:
                return
            for dep in node.deps.values():
                visit(dep)
            seen[node.key] = node

        visit(self)
        return list(seen.values())


def legacy_twin(node: Node, precision: str) -> Node:
    """`node` as a run from before runs recorded their runtime specified it: no device in any spec,
    the precision its scale gave (`auto`, or the one it pinned) — the key its artifact was made under then."""
    spec = node.spec
    if "device" in spec:
        spec = {**{k: v for k, v in spec.items() if k != "device"}, "precision": precision}
    return Node(node.kind, spec, {name: legacy_twin(dep, precision) for name, dep in node.deps.items()})


class Store:
    def __init__(self, root):
        self.root = Path(root)

    def path(self, node: Node) -> Path:
        return self.root / node.kind / node.key

    def done(self, node: Node) -> bool:
        return (self.path(node) / "artifact.json").is_file()

    def begun(self, node: Node) -> bool:
        """Whether a run of `node` has left files in its directory (a make under way, or one stopped)."""
        target = self.path(node)
        return target.is_dir() and any(target.iterdir())

    def result(self, node: Node) -> dict:
        """What making the node returned (scores for an evaluation; paths are relative to its directory)."""
        return self.read_record(node)["result"]

    def read_record(self, node: Node) -> dict:
        """The node's artifact.json, checked to describe it."""
        file = self.path(node) / "artifact.json"
        try:
            record = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DtmergeError(f"{file}: not a readable artifact record ({type(e).__name__}); delete its "
                               f"directory to make it again") from None
        if record.get("format") != STORE_FORMAT or record.get("key") != node.key:
            raise DtmergeError(f"{file}: does not describe this artifact (format or key differs)")
        return record

    @contextmanager
    def lock(self, node: Node):
        """Held while `node` is made or adopted: runs that share a store (two commands, or workers
        on a shared path) wait for each other rather than make one artifact twice."""
        self.path(node).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path(node).with_name(node.key + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def record(self, node: Node, result: dict, seconds: float) -> dict:
        return {"format": STORE_FORMAT, "key": node.key, "version": __version__, "kind": node.kind,
                "spec": node.spec, "deps": {name: dep.key for name, dep in node.deps.items()}, "seconds": seconds,
                "result": result}

    def finish(self, node: Node, result: dict, seconds: float) -> None:
        write_json(self.path(node) / "artifact.json", self.record(node, result, seconds))

    def adopt(self, node: Node, twin: Node) -> bool:
        """Make `node` from `twin`, a done artifact of the same computation under another key: its
        files hard-linked (copied where links cannot be made) into a staging directory beside it,
        recorded there under `node`'s key, and renamed into place whole, under `node`'s lock. False
        (nothing changed) where `node` is done or a run of it has begun, or the files cannot be placed."""
        target, source = self.path(node), self.path(twin)
        with self.lock(node):
            if self.done(node) or self.begun(node):
                return False
            made = self.read_record(twin)
            staging = Path(tempfile.mkdtemp(prefix=f".{node.key}.", dir=target.parent))
            try:
                shutil.copytree(source, staging, copy_function=_link, dirs_exist_ok=True,
                                ignore=lambda d, names: ["artifact.json"] if Path(d) == source else [])
                write_json(staging / "artifact.json", self.record(node, made["result"], made.get("seconds", 0.0)))
                if target.exists():
                    target.rmdir()  # the empty directory a waiting `make` created
                os.rename(staging, target)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                return False
        return True


def _link(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
