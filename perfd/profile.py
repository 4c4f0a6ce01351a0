"""App profiles: how to recognise an app's DAG from outside — data, not code.

A profile names the node-entry function, the locals that carry the node id,
node object and payload, and where app state lives as remote paths
(``module:attr.attr[key]``). Each state path may list alternatives; the first
that resolves in the target wins, so one profile serves several layouts of
the same app family. A user with a differently shaped app writes a new TOML
file and passes ``--profile``.
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from perfd.errors import UsageError

DEFAULT_PROFILE = "lidar_scan.toml"
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[[^\]]+\])*$")


class ProfileError(UsageError):
    """A profile file is missing or malformed; the message names the bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeEntry(_Strict):
    qualname: str = Field(min_length=1)
    file_suffix: str = Field(min_length=1)
    node_id_local: str = Field(min_length=1)
    node_local: str = Field(min_length=1)
    payload_local: str = Field(min_length=1)
    points_key: str = "points"


class NodeAttributes(_Strict):
    name_attr: str = "name"
    type_attr: str = "type"
    name_fallback: str = "id"  # SPEC: name falls back to the id
    type_fallback: str = "unknown"
    # A node method's local (``self`` first) holding the call's points, on the
    # thread doing the node's work: the Open3D op probe counts it as each op
    # begins, so calls too short for the call tracker still report their points.
    points_local: str | None = None


def _paths(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


class AppState(_Strict):
    node_registry: list[str]
    sensor_queue: list[str] = Field(default_factory=list)
    sensor_queue_maxsize: int | None = Field(None, ge=1)
    throttled_counts: list[str] = Field(default_factory=list)
    ws_manager: list[str] = Field(default_factory=list)
    # Exact call counts without seeing every call: frames the source node took,
    # which node it is, and the DAG's edges. calls(child) = calls(parents) - throttled(child).
    frames_counter: list[str] = Field(default_factory=list)
    source_node_id: list[str] = Field(default_factory=list)
    downstream_map: list[str] = Field(default_factory=list)

    @field_validator("node_registry", "sensor_queue", "throttled_counts", "ws_manager", "frames_counter",
                     "source_node_id", "downstream_map", mode="before")
    @classmethod
    def _as_list(cls, value: object) -> object:
        return _paths(value) if isinstance(value, (str, list)) else value

    @field_validator("node_registry", "sensor_queue", "throttled_counts", "ws_manager", "frames_counter",
                     "source_node_id", "downstream_map")
    @classmethod
    def _well_formed(cls, value: list[str]) -> list[str]:
        for path in value:
            if not _PATH.match(path):
                raise ValueError(f"{path!r} is not a remote path like 'pkg.module:obj.attr[key]'")
        return value


class WebSocketRoutes(_Strict):
    path_patterns: list[str] = Field(default_factory=lambda: ["/ws/{topic}", "/api/v1/ws/{topic}"])
    # On each connection object in ws_manager's lists: the peer's (host, port).
    # Lets capture name the topic of connections opened before perfd attached.
    connection_peer: str = "scope[client]"

    @field_validator("path_patterns")
    @classmethod
    def _has_topic(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if "{topic}" not in pattern:
                raise ValueError(f"{pattern!r} has no {{topic}} placeholder")
        return value

    def topic_of(self, path: str) -> str | None:
        """The topic a WebSocket upgrade path belongs to, or None."""
        path = path.split("?", 1)[0]
        for pattern in self.path_patterns:
            prefix, _, suffix = pattern.partition("{topic}")
            if path.startswith(prefix) and path.endswith(suffix):
                topic = path[len(prefix) : len(path) - len(suffix) if suffix else None]
                if topic and "/" not in topic:
                    return topic
        return None


class HttpRoutes(_Strict):
    endpoint_prefix: str = "/api/"


class AppProfile(_Strict):
    name: str
    description: str = ""
    node_entry: NodeEntry
    node: NodeAttributes = Field(default_factory=NodeAttributes)
    state: AppState
    websocket: WebSocketRoutes = Field(default_factory=WebSocketRoutes)
    http: HttpRoutes = Field(default_factory=HttpRoutes)
    source: str = ""  # where it was loaded from, for messages


def load_profile(path: str | Path | None = None) -> AppProfile:
    """Load and validate a profile; ``None`` means the bundled default."""
    if path is None:
        text = resources.files("perfd.probes").joinpath(DEFAULT_PROFILE).read_text()
        origin = f"bundled {DEFAULT_PROFILE}"
    else:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ProfileError(f"cannot read profile {path}: {e.strerror}") from None
        origin = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"profile {origin} is not valid TOML: {e}") from None
    try:
        return AppProfile.model_validate({**data, "source": origin})
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"profile {origin}: {key}: {first['msg']}") from None
