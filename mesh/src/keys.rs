//! Service names as zenoh key expressions. A name with a character zenoh
//! gives a meaning (`*`, `$`, `?`, `#`, `/`) is refused rather than
//! escaped: an escape would make two spellings of one service.

use crate::MeshError;

/// The characters a key-expression chunk cannot hold literally.
const RESERVED: [char; 5] = ['*', '$', '?', '#', '/'];

/// The key expression of a service: `metabridge/<name>`.
///
/// ```
/// assert_eq!(metabridge_mesh::service_key("orders").unwrap(), "metabridge/orders");
/// assert!(metabridge_mesh::service_key("a/b").is_err());
/// ```
pub fn service_key(name: &str) -> Result<String, MeshError> {
    metabridge::validate_service_name(name).map_err(|_| MeshError::Name {
        name: name.to_string(),
        why: "not a valid MetaBridge service name",
    })?;
    if name.contains(RESERVED) {
        return Err(MeshError::Name {
            name: name.to_string(),
            why: "zenoh key expressions give `*`, `$`, `?`, `#` and `/` a meaning",
        });
    }
    Ok(format!("metabridge/{name}"))
}

/// The advert key of one instance.
pub(crate) fn advert_key(service: &str, instance: &str) -> String {
    format!("{service}/{instance}/advert")
}
