"""App profiles load from data and fail with the offending key named."""

from __future__ import annotations

import pytest

from perfd.profile import ProfileError, load_profile


def test_bundled_profile_loads():
    p = load_profile()
    assert p.node_entry.qualname == "DataRouter._send_to_target_node"
    assert p.node_entry.file_suffix == "routing.py"
    assert any(path.startswith("perfd.demo.") for path in p.state.node_registry)
    assert p.websocket.topic_of("/ws/crop_1234abcd") == "crop_1234abcd"
    assert p.websocket.topic_of("/api/v1/ws/system_status?x=1") == "system_status"
    assert p.websocket.topic_of("/ws/a/b") is None
    assert p.websocket.topic_of("/api/metrics") is None


@pytest.mark.parametrize(
    "text,key",
    [
        ("name = 'x'\n[state]\nnode_registry = ['m:a']\n", "node_entry"),
        ("name='x'\n[node_entry]\nqualname='f'\nfile_suffix='r.py'\nnode_id_local='i'\nnode_local='n'\n"
         "payload_local='p'\n[state]\nnode_registry=['not a path']\n", "state.node_registry"),
        ("name='x'\n[node_entry]\nqualname='f'\nfile_suffix='r.py'\nnode_id_local='i'\nnode_local='n'\n"
         "payload_local='p'\nbogus=1\n[state]\nnode_registry='m:a.b'\n", "node_entry.bogus"),
        ("name='x'\n[node_entry]\nqualname='f'\nfile_suffix='r.py'\nnode_id_local='i'\nnode_local='n'\n"
         "payload_local='p'\n[state]\nnode_registry='m:a.b'\n[websocket]\npath_patterns=['/ws/x']\n",
         "websocket.path_patterns"),
        ("name = [", "not valid TOML"),
    ],
)
def test_malformed_profiles_name_the_key(tmp_path, text, key):
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert key in str(e.value)
    assert e.value.exit_code == 2


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "nope.toml")
