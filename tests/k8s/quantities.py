"""Kubernetes resource quantities as numbers: CPU in millicores, the rest in bytes."""
import math
import re

SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def cpu(value) -> int:
    text = str(value)
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


def size(value) -> int:
    m = re.fullmatch(r"([0-9.]+)([kMGT]i?|)", str(value))
    assert m, f"unreadable quantity {value!r}"
    return round(float(m.group(1)) * SUFFIX[m.group(2)])


def redis_size(value) -> int:
    """Redis' memory units: mb is 1024*1024 bytes, m is 10^6."""
    m = re.fullmatch(r"([0-9]+)(b|k|kb|m|mb|g|gb|)", str(value).lower())
    assert m, f"unreadable Redis size {value!r}"
    units = {"": 1, "b": 1, "k": 10**3, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
    return int(m.group(1)) * units[m.group(2)]


def surge(max_surge, replicas) -> int:
    """Extra pods a rolling update may start: maxSurge as an int or a percentage (rounded up)."""
    if isinstance(max_surge, str) and max_surge.endswith("%"):
        return math.ceil(replicas * int(max_surge[:-1]) / 100)
    return int(max_surge)
