"""Run configuration: typed schema (``schema``) and YAML loading with overrides (``loader``)."""

from dynamo_async.config.loader import (
    apply_override,
    config_from_dict,
    config_to_yaml,
    describe_fields,
    dump_config,
    load_config,
    parse_yaml,
)
from dynamo_async.config.schema import METHODS, RunConfig

__all__ = [
    "METHODS",
    "RunConfig",
    "apply_override",
    "config_from_dict",
    "config_to_yaml",
    "describe_fields",
    "dump_config",
    "load_config",
    "parse_yaml",
]
