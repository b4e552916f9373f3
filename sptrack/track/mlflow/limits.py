"""What MLflow accepts: its validation limits (refreshed from ``mlflow.utils.validation``) and valid keys.

:data:`LIMITS` is one shared object rather than module constants, so every module of the adapter
sees :func:`load_limits`' refresh. :class:`KeyMapper` turns any sptrack key into a key MLflow takes
(the same answer every time, over-long keys shortened with a hash and remembered).
"""

from __future__ import annotations

import hashlib
import re


class Limits:
    """MLflow 3.x validation limits; the values below hold until :func:`load_limits` reads MLflow's own."""

    param_value = 6000
    tag_value = 8000
    key = 250
    metrics_per_batch = 1000
    params_tags_per_batch = 100
    #: Metrics + params + tags in one ``log_batch`` request.
    entities_per_batch = 1000
    #: Characters of param/tag keys and values in one request: well under MLflow's 1e6-byte request limit.
    batch_value_chars = 500_000


LIMITS = Limits()

INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def load_limits() -> None:
    """Refresh :data:`LIMITS` from the installed MLflow (names missing there keep their defaults)."""
    try:
        from mlflow.utils import validation as v
    except ImportError:  # pragma: no cover - MLflow is a dependency
        return
    LIMITS.param_value = getattr(v, "MAX_PARAM_VAL_LENGTH", LIMITS.param_value)
    LIMITS.tag_value = getattr(v, "MAX_TAG_VAL_LENGTH", LIMITS.tag_value)
    LIMITS.key = getattr(v, "MAX_ENTITY_KEY_LENGTH", LIMITS.key)
    LIMITS.metrics_per_batch = getattr(v, "MAX_METRICS_PER_BATCH", LIMITS.metrics_per_batch)
    LIMITS.params_tags_per_batch = getattr(v, "MAX_PARAMS_TAGS_PER_BATCH", LIMITS.params_tags_per_batch)
    LIMITS.entities_per_batch = getattr(v, "MAX_ENTITIES_PER_BATCH", LIMITS.entities_per_batch)


def safe_name(key: str) -> str:
    """``key`` as one file or folder name (artifact files of long params, experiment folders)."""
    return re.sub(r"[^\w.\-]+", "_", key).strip("._") or "value"


class KeyMapper:
    """Valid MLflow keys for arbitrary keys: invalid characters become ``_``, over-long keys get a hash.

    ``shortened`` maps each shortened key back to the original (the tracker logs it as
    ``params/long_keys.json``).
    """

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}
        self.shortened: dict[str, str] = {}

    def __call__(self, key: str) -> str:
        cached = self._keys.get(key)
        if cached is not None:
            return cached
        clean = INVALID_KEY_CHARS.sub("_", key)
        clean = re.sub(r"/{2,}", "/", clean).strip("/")
        clean = "/".join("_" if part in (".", "..") else part for part in clean.split("/")) or "_"
        if len(clean) > LIMITS.key:
            digest = hashlib.sha1(key.encode()).hexdigest()[:10]
            clean = clean[: LIMITS.key - 11] + "-" + digest
            self.shortened[clean] = key
        self._keys[key] = clean
        return clean
