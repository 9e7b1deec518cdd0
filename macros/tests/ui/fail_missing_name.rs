#[derive(Default)]
pub struct DemoService;

#[metabridge::service]
impl DemoService {
    #[metabridge::function]
    pub fn ping(&self) {}
}

#[derive(Default)]
pub struct Other;

#[metabridge::service(port = 9000)]
impl Other {}

fn main() {}
