//! What a meshed service or a mesh client refuses, in this process: a
//! service the mesh cannot expose safely never starts, and a client with
//! no replica gets `ServiceNotFound` naming the mesh.

use metabridge::{Error, Service};
use metabridge_mesh::{ConnectMesh, MeshConfig, ServiceMesh};
use std::time::Duration;

mod support;

/// This test process's home, removed when the last test using it ends
/// (each refused service stops before it writes anything there).
fn home() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mb-mesh-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn seeds() -> MeshConfig {
    MeshConfig::from_setting(&support::free_endpoint()).unwrap()
}

fn refused(service: Service<()>) -> String {
    let home = home();
    std::env::set_var("METABRIDGE_HOME", &home);
    let result = metabridge::serve(service);
    // Refused before the registry is opened: nothing was written.
    std::fs::remove_dir(&home).ok();
    match result {
        Err(Error::Announce { why, .. }) => why,
        other => panic!("the service must be refused at start: {other:?}"),
    }
}

fn tls() -> metabridge::TlsFiles {
    metabridge::TlsFiles {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        client_ca: None,
    }
}

#[test]
fn a_meshed_service_needs_an_exposed_address_tls_and_a_token_or_client_certificates() {
    let why = refused(Service::new("m-local").mesh(seeds()));
    assert!(why.contains("0.0.0.0"), "{why}");
    let why = refused(Service::new("m-plain").host("0.0.0.0").mesh(seeds()));
    assert!(why.contains("must serve TLS"), "{why}");
    let why = refused(
        Service::new("m-open")
            .host("0.0.0.0")
            .tls(tls())
            .mesh(seeds()),
    );
    assert!(why.contains("operator token"), "{why}");
}

#[test]
fn a_name_zenoh_cannot_hold_is_refused_at_start() {
    let service = Service::new("m$x")
        .host("0.0.0.0")
        .tls(tls())
        .configure(|c| c.token = Some("t".into()))
        .mesh(seeds());
    let why = refused(service);
    assert!(why.contains("cannot be used in the mesh"), "{why}");
}

#[test]
fn a_client_with_no_replica_gets_service_not_found_naming_the_mesh() {
    let config = seeds();
    let seed = config.connect[0].clone();
    let own_home = std::env::temp_dir().join(format!("mb-mesh-nobody-{}", std::process::id()));
    let client = metabridge::connect("nobody-serves-this")
        .home(&own_home)
        .token("t")
        .timeout(Duration::from_secs(5))
        .mesh(config)
        .tls(metabridge::tls::ClientTls::pinned(&format!("sha256:{}", "ab".repeat(32))).unwrap())
        .discovery(Duration::from_millis(300))
        .open()
        .unwrap();
    let result = client.call::<u32>("whoami", ());
    std::fs::remove_dir_all(&own_home).ok();
    match result {
        Err(Error::ServiceNotFound { name, reason }) => {
            assert_eq!(name, "nobody-serves-this");
            assert!(reason.contains(&seed), "names the mesh: {reason}");
        }
        other => panic!("expected ServiceNotFound: {other:?}"),
    }
}

#[test]
fn a_mesh_client_without_a_ca_or_pin_is_refused() {
    std::env::remove_var("METABRIDGE_TLS_CA");
    std::env::remove_var("METABRIDGE_TLS_PIN");
    match metabridge::connect("x").mesh(seeds()).open() {
        Err(Error::Announce { why, .. }) => assert!(why.contains("own CA or pins"), "{why}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a mesh client must verify replicas"),
    }
}
