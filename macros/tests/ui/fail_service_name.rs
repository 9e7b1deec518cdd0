//! Service names become file names: a name with '/' (or empty, or longer than 64
//! bytes, or with control characters) is refused at compile time.
#[derive(Default)]
pub struct A;

#[metabridge::service(name = "tools/a")]
impl A {}

#[derive(Default)]
pub struct B;

#[metabridge::service(name = "a-name-that-goes-on-and-on-well-past-the-sixty-four-bytes-allowed")]
impl B {}

fn main() {}
