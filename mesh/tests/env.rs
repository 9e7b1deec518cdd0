//! `$METABRIDGE_MESH` (its own test process: the variable is the
//! process's): a program that did not install the mesh joins through the
//! `metabridge-mesh agent` helper (and names it when it cannot run it);
//! one that did joins in process. Either way the mesh's checks run first.

use metabridge::{Error, Service};

fn refusal(service: Service<()>) -> String {
    match metabridge::serve(service) {
        Err(Error::Announce { why, .. }) => why,
        other => panic!("the service must be refused at start: {other:?}"),
    }
}

/// Exposed, with TLS files named and a token: what the mesh asks for (the
/// files are read only after the announcer's checks).
fn secure() -> Service<()> {
    Service::<()>::new("env-meshed")
        .host("0.0.0.0")
        .tls(metabridge::TlsFiles {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            client_ca: None,
        })
        .configure(|c| c.token = Some("t".into()))
}

#[test]
fn metabridge_mesh_joins_through_the_helper_or_in_process_after_install() {
    let home = std::env::temp_dir().join(format!("mb-mesh-env-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::env::set_var("METABRIDGE_HOME", &home);
    std::env::set_var("METABRIDGE_MESH", "tcp/127.0.0.1:9");
    // Not installed: the helper's path; the same checks come first.
    let why = refusal(Service::<()>::new("env-meshed"));
    assert!(why.contains("0.0.0.0"), "{why}");
    std::env::set_var("METABRIDGE_MESH_TOOL", "/nonexistent/metabridge-mesh");
    let why = refusal(secure());
    assert!(
        why.contains("/nonexistent/metabridge-mesh") && why.contains("METABRIDGE_MESH_TOOL"),
        "the helper that cannot run is named, and how to give it: {why}"
    );
    // The helper reads the setting as the in-process announcer would.
    std::env::set_var(
        "METABRIDGE_MESH_TOOL",
        env!("CARGO_BIN_EXE_metabridge-mesh"),
    );
    std::env::set_var("METABRIDGE_MESH", "lease=soon");
    let why = refusal(secure());
    assert!(why.contains("milliseconds"), "{why}");
    std::env::set_var("METABRIDGE_MESH", "tcp/127.0.0.1:9");
    let why = refusal(secure().configure(|c| c.token = None));
    assert!(why.contains("operator token"), "{why}");

    metabridge_mesh::install();
    // Now the mesh's own checks run in process: this service has no TLS.
    let why = refusal(Service::<()>::new("env-meshed").host("0.0.0.0"));
    assert!(why.contains("must serve TLS"), "{why}");
    std::env::set_var("METABRIDGE_MESH", "lease=soon");
    let why = refusal(secure());
    assert!(why.contains("milliseconds"), "{why}");
    std::fs::remove_dir_all(&home).ok();
}
