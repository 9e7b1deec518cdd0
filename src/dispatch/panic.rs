//! What a caught panic said, for the error a caller gets or the log.
//!
//! A leaf of the dispatch module: both the dispatcher (endpoint and
//! constructor panics) and the instance cache (panicking `Drop`s) need
//! it, and neither should depend on the other for it.

use std::any::Any;

/// The message of a panic payload (`panic!` with a literal or a format),
/// or a generic one for any other payload.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "endpoint panicked".into()
    }
}
