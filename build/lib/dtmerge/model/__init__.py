from dtmerge.model.dt import DecisionTransformer, DTConfig
from dtmerge.model.gpt import GPT
from dtmerge.model.groups import parameter_groups

__all__ = ["DTConfig", "DecisionTransformer", "GPT", "parameter_groups"]
