"""One rule for turning metrics, configs and manifests into strict JSON."""
from __future__ import annotations

import math

import numpy as np


def json_safe(obj):
    """JSON-able copy: NaN/inf -> None, numpy scalars/arrays -> Python, tuples -> lists, other objects -> str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
