//! A name with an invisible or direction-changing character would look like
//! another in `metabridge list`: refused at compile time, naming the code point.
#[derive(Default)]
pub struct A;

#[metabridge::service(name = "demo\u{200B}-service")]
impl A {}

#[derive(Default)]
pub struct B;

#[metabridge::service(name = "pay\u{202E}knl.exe")]
impl B {}

fn main() {}
