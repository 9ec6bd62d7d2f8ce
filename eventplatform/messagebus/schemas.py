"""The published contract: a JSON Schema of ``data`` per event type and version, and its check.

Schemas are generated from the event classes by pydantic, the same description the store
writes and validates events with (:mod:`eventplatform.store.mapper`), in its serialization
mode: what is on the wire. ``timestamp``, ``class_version`` and the aggregate id and version
are left out: they travel as ``time``, ``dataschema``, ``subject`` and ``aggregateversion``.
Each schema's ``$id`` is the ``dataschema`` of the messages it describes.

A published schema is a promise to consumers. :func:`check` compares the classes with the
schemas published before and names every change that breaks a consumer of an already
published version: a field removed or renamed, a field whose type changed, a field that
became optional or nullable, a new required field (events already published lack it). Such a
change is fine as a new version: ``class_version = N + 1`` with ``upcast_vN_vN+1`` on the
class; the old version's schema stays published, since events stored as vN are still
published as vN.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from eventsourcing.domain import BaseAggregate, CanMutateAggregate
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from eventplatform.errors import EventPlatformError
from eventplatform.messagebus.cloudevents import schema_uri
from eventplatform.store.mapper import ENVELOPE_FIELDS, adapter, wire_topic

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
#: How a Python ``Decimal`` is written (``str(Decimal)``): digits, a point, an exponent.
DECIMAL_PATTERN = r"^-?\d+(\.\d+)?(E[+-]\d+)?$"
#: JSON Schema keywords that only annotate: changing them breaks no consumer.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "deprecated", "$comment", "readOnly"}
)
_FILE = re.compile(r"^(?P<topic>.+)\.v(?P<version>[1-9][0-9]*)\.schema\.json$")


class IncompatibleSchemas(EventPlatformError):
    """An event class changed in a way that breaks consumers of a published schema."""


@dataclass(frozen=True, slots=True)
class EventSchema:
    """The schema of one event type at one version.

    Attributes:
        topic: the event type.
        version: the class version.
        schema: the JSON Schema of ``data``.
    """

    topic: str
    version: int
    schema: dict[str, Any]

    @property
    def file_name(self) -> str:
        """``<type>.v<version>.schema.json``, the type percent-encoded."""
        return file_name(self.topic, self.version)


class _WireSchema(GenerateJsonSchema):
    def get_decimal_pattern(self, schema: core_schema.DecimalSchema) -> str | None:
        return DECIMAL_PATTERN


def event_classes_in(obj: Any) -> list[type[Any]]:
    """The event classes a module, an aggregate class or an event class holds.

    A module gives those of every aggregate and event class among its attributes; an
    aggregate gives the event classes defined in it, except its base ``Event`` (eventsourcing
    never triggers it); an event class gives itself.
    """
    if isinstance(obj, type):
        if issubclass(obj, CanMutateAggregate):
            return [obj]
        if issubclass(obj, BaseAggregate):
            return [
                value
                for name, value in vars(obj).items()
                if isinstance(value, type) and issubclass(value, CanMutateAggregate)
                if name != "Event"
            ]
        return []
    if isinstance(obj, types.ModuleType):
        found: dict[type[Any], None] = {}
        for value in vars(obj).values():
            if isinstance(value, type):
                found.update(dict.fromkeys(event_classes_in(value)))
        return list(found)
    return []


def file_name(topic: str, version: int) -> str:
    """The file a schema is exported to."""
    return f"{quote(topic, safe='')}.v{version}.schema.json"


def event_schema(cls: type[Any]) -> EventSchema:
    """The JSON Schema of ``data`` for an event class, at its current version.

    Raises:
        ConfigurationError: the class has no pinned topic or pydantic cannot describe it.
    """
    topic = wire_topic(cls)
    version = int(getattr(cls, "class_version", 1))
    full = adapter(cls).json_schema(mode="serialization", schema_generator=_WireSchema)
    properties = {k: v for k, v in full.get("properties", {}).items() if k not in ENVELOPE_FIELDS}
    required = [k for k in full.get("required", []) if k not in ENVELOPE_FIELDS]
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_uri(topic, version),
        "title": topic,
    }
    doc = _docstring(cls)
    if doc:
        schema["description"] = doc
    schema.update({"type": "object", "properties": properties, "required": required})
    if "$defs" in full:
        schema["$defs"] = full["$defs"]
    return EventSchema(topic, version, schema)


def _docstring(cls: type[Any]) -> str | None:
    # eventsourcing subclasses the class written in the aggregate: look along the MRO, but
    # not into eventsourcing's or pydantic's own classes, nor at dataclasses' generated text.
    for klass in cls.__mro__:
        if klass.__module__.split(".")[0] in ("eventsourcing", "pydantic", "builtins"):
            continue
        doc = klass.__dict__.get("__doc__")
        if doc and not doc.startswith(f"{klass.__name__}("):
            return " ".join(doc.split())
    return None


def schemas_of(classes: Iterable[type[Any]]) -> list[EventSchema]:
    """The schemas of event classes, one per type, ordered by type."""
    by_topic = {s.topic: s for s in map(event_schema, classes)}
    return [by_topic[t] for t in sorted(by_topic)]


def export(classes: Iterable[type[Any]], directory: Path) -> list[Path]:
    """Writes each class's schema to ``directory``; schemas of other versions stay.

    Returns:
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for s in schemas_of(classes):
        path = directory / s.file_name
        path.write_text(json.dumps(s.schema, indent=2, ensure_ascii=False) + "\n")
        written.append(path)
    return written


def published(directory: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The schemas in ``directory``, by (type, version), read from their ``$id``.

    Raises:
        IncompatibleSchemas: a file is not a schema this command wrote.
    """
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.schema.json")):
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            msg = f"{path}: not a JSON schema ({e})"
            raise IncompatibleSchemas(msg) from e
        match = _FILE.match(path.name)
        schema_id = schema.get("$id") if isinstance(schema, dict) else None
        if not match or not isinstance(schema_id, str):
            msg = f"{path}: not named <type>.v<N>.schema.json or without $id"
            raise IncompatibleSchemas(msg)
        topic, version = str(schema.get("title", "")), int(match["version"])
        if schema_id != schema_uri(topic, version):
            msg = f"{path}: $id {schema_id!r} is not {schema_uri(topic, version)!r}"
            raise IncompatibleSchemas(msg)
        found[(topic, version)] = schema
    return found


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What :func:`check` found.

    Attributes:
        problems: changes that break consumers of a published schema.
        new: schemas not published yet (new types, new versions): export them.
    """

    problems: list[str]
    new: list[str]


def check(classes: Iterable[type[Any]], directory: Path) -> CheckResult:
    """Compares the event classes with the schemas published in ``directory``.

    Args:
        classes: every event class of the service.
        directory: the schemas published before (``schemas --out``).
    """
    current = {s.topic: s for s in schemas_of(classes)}
    by_topic = {wire_topic(cls): cls for cls in classes}
    before = published(directory)
    problems: list[str] = []
    for (topic, version), old in sorted(before.items()):
        now = current.get(topic)
        if now is None:
            problems.append(
                f"{topic}: published (v{version}) but no event class has this type any more; "
                "stored events and consumers still have it"
            )
            continue
        if version == now.version:
            problems.extend(
                f"{topic} v{version}: {change}; publish it as a new version instead "
                f"(class_version = {version + 1} and upcast_v{version}_v{version + 1})"
                for change in breaking_changes(old, now.schema)
            )
        elif version > now.version:
            problems.append(f"{topic}: v{version} is published but the class is at v{now.version}")
        else:
            cls = by_topic[topic]
            problems.extend(
                f"{topic}: v{v} is published but {cls.__qualname__} has no upcast_v{v}_v{v + 1}"
                for v in range(version, now.version)
                if not callable(getattr(cls, f"upcast_v{v}_v{v + 1}", None))
            )
    new = [
        f"{s.topic} v{s.version} ({s.file_name})"
        for s in current.values()
        if (s.topic, s.version) not in before
    ]
    return CheckResult(problems, new)


def breaking_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The changes from ``old`` to ``new`` (schemas of one version) that break a consumer."""
    return _object_changes(old, new, old, new, "")


def _object_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], old_root: Any, new_root: Any, path: str
) -> list[str]:
    changes: list[str] = []
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    for name, old_field in old_props.items():
        where = f"{path}{name}"
        if name not in new_props:
            changes.append(f"field {where!r} was removed or renamed")
            continue
        if name in old_required and name not in new_required:
            changes.append(f"field {where!r} became optional")
        changes.extend(_field_changes(old_field, new_props[name], old_root, new_root, where))
    changes.extend(
        f"field {path + name!r} is new and required: events already published lack it"
        for name in new_props
        if name not in old_props and name in new_required
    )
    return changes


def _field_changes(old: Any, new: Any, old_root: Any, new_root: Any, where: str) -> list[str]:
    old, new = _resolve(old, old_root), _resolve(new, new_root)
    if _is_object(old) and _is_object(new):
        return _object_changes(old, new, old_root, new_root, f"{where}.")
    if _shape(old, old_root) != _shape(new, new_root):
        return [
            f"field {where!r} changed type ({_brief(old, old_root)} -> {_brief(new, new_root)})"
        ]
    return []


def _is_object(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "object" and "properties" in schema


def _resolve(schema: Any, root: Any) -> Any:
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return schema
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        seen += 1
    return schema


def _shape(schema: Any, root: Any, depth: int = 0) -> Any:
    """A schema with references resolved and annotations dropped: what a value may be."""
    if depth > 32:
        return "..."
    schema = _resolve(schema, root)
    if isinstance(schema, dict):
        return {
            k: _shape(v, root, depth + 1)
            for k, v in sorted(schema.items())
            if k not in _ANNOTATIONS
        }
    if isinstance(schema, list):
        return [_shape(v, root, depth + 1) for v in schema]
    return schema


def _brief(schema: Any, root: Any) -> str:
    shape = _shape(schema, root)
    if isinstance(shape, dict):
        for key in ("type", "anyOf", "oneOf", "enum", "const"):
            if key in shape:
                return json.dumps({key: shape[key]}, separators=(",", ":"))[:80]
    return json.dumps(shape, separators=(",", ":"))[:80]
