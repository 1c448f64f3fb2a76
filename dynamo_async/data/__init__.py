"""Prompts with verifiable answers: file loading and the synthetic arithmetic task."""

from dynamo_async.data.problems import Problem, load_problems
from dynamo_async.data.synthetic import generate, train_eval_split

__all__ = ["Problem", "generate", "load_problems", "train_eval_split"]
