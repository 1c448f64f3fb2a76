"""Verifiable math rewards: last-``\\boxed{}`` extraction and a math-verify process pool."""

from dynamo_async.rewards.extract import last_boxed
from dynamo_async.rewards.math_verify_pool import MathVerifyScorer
from dynamo_async.rewards.messages import ScoreResult, Status
from dynamo_async.rewards.worker import score_response

__all__ = ["MathVerifyScorer", "ScoreResult", "Status", "last_boxed", "score_response"]
