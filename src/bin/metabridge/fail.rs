//! A command's failure and the exit status it gives: 1 when the call or
//! command failed, 2 for a bad command line.

use metabridge::Error;

/// A failure and the exit status it gives.
pub struct Fail(pub u8, pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        match e {
            Error::Remote { kind, message } => Fail(1, format!("{kind}: {message}")),
            other => Fail(1, other.to_string()),
        }
    }
}

/// A bad command line (exit status 2).
pub fn usage(msg: impl Into<String>) -> Fail {
    Fail(2, msg.into())
}
