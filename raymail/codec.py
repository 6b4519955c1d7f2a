"""The one codec for data leaving a process: msgpack with a type tag and a version.

A registered dataclass is packed as an ext value holding ``[tag, version, fields]``;
fields are positional, so adding a field at the end with a default keeps old
records readable. Arrays decode as tuples.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from raymail import model, search
from raymail.outbound import records

_EXT = 1
_VERSION = 1

_BY_TAG: dict[int, type] = {}
_BY_TYPE: dict[type, int] = {}
_FIELDS: dict[type, tuple[str, ...]] = {}


def register(tag: int, cls: type) -> None:
    if tag in _BY_TAG and _BY_TAG[tag] is not cls:
        raise ValueError(f"codec tag {tag} already used by {_BY_TAG[tag].__name__}")
    _BY_TAG[tag] = cls
    _BY_TYPE[cls] = tag
    _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))


for _tag, _cls in enumerate(
    (model.Address, model.User, model.EmailMeta, model.Event, model.Deliver, model.Update, model.Delete, model.OpResult),
    start=1,
):
    register(_tag, _cls)
register(9, model.AttachmentRef)
register(10, model.AddUpload)
register(11, model.AuthSummary)
register(12, search.Clause)
register(13, search.SearchQuery)
register(14, model.ExpireUploads)
# Outbound spool records (raymail/outbound/records.py).
register(21, records.OutboundMessage)
register(22, records.Attempt)
register(23, records.QuotaUse)
register(24, records.Suppress)
register(25, records.Unsuppress)
register(26, records.Requeue)
register(27, records.DsnDone)


def _default(obj: Any) -> Any:
    tag = _BY_TYPE.get(type(obj))
    if tag is None:
        raise TypeError(f"codec cannot encode {type(obj).__name__}")
    values = [getattr(obj, name) for name in _FIELDS[type(obj)]]
    return msgpack.ExtType(_EXT, msgpack.packb([tag, _VERSION, values], default=_default, use_bin_type=True))


def _ext_hook(code: int, data: bytes) -> Any:
    if code != _EXT:
        return msgpack.ExtType(code, data)
    tag, version, values = msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False, strict_map_key=False)
    cls = _BY_TAG.get(tag)
    if cls is None:
        raise ValueError(f"codec: unknown type tag {tag} (version {version})")
    return cls(*values)


def encode(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, use_list=False, raw=False, strict_map_key=False)
