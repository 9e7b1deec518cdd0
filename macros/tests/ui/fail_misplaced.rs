pub struct DemoService;

impl DemoService {
    #[metabridge::function]
    pub fn ping(&self) {}

    #[metabridge::endpoint("pong")]
    pub fn pong(&self) {}
}

fn main() {}
