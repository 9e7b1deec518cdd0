#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    #[metabridge::function]
    pub fn run(&self) {}
}

fn main() {}
