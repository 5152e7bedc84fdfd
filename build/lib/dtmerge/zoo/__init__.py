"""Behaviour policies: framework-free actors that ship with dtmerge and make its datasets."""

from dtmerge.zoo.actor import Actor, ActorError, load_zoo_actor, zoo_manifest

__all__ = ["Actor", "ActorError", "load_zoo_actor", "zoo_manifest"]
