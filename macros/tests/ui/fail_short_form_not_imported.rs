// The short forms work inside a service impl once imported
// (`use metabridge::function;`); without the import rustc says so.
use metabridge::service;

#[derive(Default)]
pub struct DemoService;

#[service(name = "demo")]
impl DemoService {
    #[function]
    pub fn ping(&self) {}
}

fn main() {}
