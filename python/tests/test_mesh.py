"""The mesh from Python, in this process's host (the calls across network
namespaces are the mesh crate's test
``python_services_and_clients_and_the_cli_call_by_name_across_the_mesh``):
what ``idempotent=`` marks, what ``create(mesh=)`` refuses at start, and
what ``connect(mesh=)`` refuses."""

import pytest

import metabridge as meta


def test_idempotent_marks_every_name_of_the_endpoint_and_nothing_else():
    d = meta._services["mesh-local-only"]
    assert sorted(d.idempotent) == ["whoami"]
    assert sorted(meta._services["mesh-secure"].idempotent) == ["fetch", "get"]
    assert meta._services["shadowed"].idempotent == []


def test_a_meshed_service_the_network_cannot_reach_safely_does_not_start():
    with pytest.raises(meta.MetaBridgeError) as e:
        meta.run("mesh-local-only")
    assert "0.0.0.0" in str(e.value)


def test_a_meshed_service_without_a_token_or_client_certificates_does_not_start(monkeypatch):
    monkeypatch.delenv("METABRIDGE_TOKEN", raising=False)
    with pytest.raises(meta.MetaBridgeError) as e:
        meta.run("mesh-secure")
    assert "operator token" in str(e.value)


def test_the_mesh_helper_that_cannot_run_is_named(monkeypatch):
    monkeypatch.setenv("METABRIDGE_TOKEN", "t")
    monkeypatch.setenv("METABRIDGE_MESH_TOOL", "/nonexistent/metabridge-mesh")
    with pytest.raises(meta.MetaBridgeError) as e:
        meta.run("mesh-secure")
    assert "/nonexistent/metabridge-mesh" in str(e.value)
    assert "METABRIDGE_MESH_TOOL" in str(e.value)


def test_create_takes_a_setting_for_mesh():
    with pytest.raises(TypeError):
        meta.create("mesh-bad", mesh=7)


def test_connect_with_mesh_refuses_what_it_cannot_honour():
    with pytest.raises(TypeError):
        meta.connect("x", mesh="tcp/127.0.0.1:9", buffers=True)
    with pytest.raises(TypeError):
        meta.connect("x", mesh="tcp/127.0.0.1:9", address="127.0.0.1:1")
    with pytest.raises(TypeError):
        meta.connect("x", mesh="tcp/127.0.0.1:9", tls={"ca": "/x", "server_name": "n"})


def test_a_mesh_call_without_the_helper_is_a_typed_error_naming_it(monkeypatch):
    monkeypatch.setenv("METABRIDGE_MESH_TOOL", "/nonexistent/metabridge-mesh")
    c = meta.connect("x", mesh="tcp/127.0.0.1:9", tls={"pin": "sha256:" + "0" * 64})
    with pytest.raises(meta.MetaBridgeError) as e:
        c.anything()
    assert "/nonexistent/metabridge-mesh" in str(e.value)
