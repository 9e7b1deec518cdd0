#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    // The generated client already has `close(self)`.
    #[metabridge::function]
    pub fn close(&self) {}

    #[metabridge::function]
    pub fn get(&self) {}

    // `get_async` is the async twin of `get`.
    #[metabridge::function]
    pub fn get_async(&self) {}
}

fn main() {}
