//! `$METABRIDGE_MESH` (its own test process: the variable is the
//! process's): refused by a program that did not install the mesh, read
//! by one that did.

use metabridge::{Error, Service};

#[test]
fn metabridge_mesh_needs_install_and_then_puts_the_service_in_the_mesh() {
    let home = std::env::temp_dir().join(format!("mb-mesh-env-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::env::set_var("METABRIDGE_HOME", &home);
    std::env::set_var("METABRIDGE_MESH", "tcp/127.0.0.1:9");
    match metabridge::serve(Service::<()>::new("env-meshed")) {
        Err(Error::Announce { why, .. }) => {
            assert!(why.contains("metabridge_mesh::install()"), "{why}")
        }
        other => panic!("expected the fix named: {other:?}"),
    }
    metabridge_mesh::install();
    // Now the mesh's own checks run: this service has no TLS.
    match metabridge::serve(Service::<()>::new("env-meshed").host("0.0.0.0")) {
        Err(Error::Announce { why, .. }) => assert!(why.contains("must serve TLS"), "{why}"),
        other => panic!("expected the mesh's refusal: {other:?}"),
    }
    std::env::set_var("METABRIDGE_MESH", "lease=soon");
    match metabridge::serve(Service::<()>::new("env-meshed").host("0.0.0.0")) {
        Err(Error::Announce { why, .. }) => assert!(why.contains("milliseconds"), "{why}"),
        other => panic!("expected the bad setting named: {other:?}"),
    }
    std::fs::remove_dir_all(&home).ok();
}
