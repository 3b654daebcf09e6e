"""The names the report reads runs by: ``GridData.runs`` columns and per-epoch history keys, from ``schema``.

``search_runs`` spells a run's values ``metrics.<key>``, ``params.<key>`` and ``tags.<key>``; the keys themselves
are ``sota_ablate.schema``'s. The per-epoch keys are those ``EpochRecord`` declares (``epoch_key("accuracy")``
is the MLflow key of its ``accuracy`` field), so no key is spelled twice.
"""

from __future__ import annotations

from sota_ablate import schema


def metric(key: str) -> str:
    """``metrics.<key>``: the column of a summary metric (``metric(schema.FINAL_ACCURACY)``)."""
    return f"metrics.{key}"


def param(key: str) -> str:
    """``params.<key>``: the column of a param (``param(schema.train_param("size"))``)."""
    return f"params.{key}"


def tag(key: str) -> str:
    """``tags.<key>``: the column of a tag."""
    return f"tags.{key}"


epoch_key = schema.epoch_key
table_keys = schema.table_keys


FINAL_ACCURACY = metric(schema.FINAL_ACCURACY)
WALL_TIME = metric(schema.WALL_TIME)
ACCURACY = epoch_key("accuracy")
TRAIN_LOSS = epoch_key("train_loss")
VALID_LOSS = epoch_key("valid_loss")
EPOCH_TIME = epoch_key("epoch_time_s")
TRAIN_TIME = epoch_key("train_time_s")
IMAGE_SIZE = epoch_key("size")
