#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    #[metabridge::function]
    pub fn echo<T: serde::Serialize>(&self, value: T) -> T {
        value
    }
}

fn main() {}
