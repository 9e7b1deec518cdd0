#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo", prot = 9000)]
impl DemoService {
    #[metabridge::function]
    pub fn ping(&self) {}
}

#[derive(Default)]
pub struct Other;

#[metabridge::service(name = "other", port = 70000)]
impl Other {}

fn main() {}
