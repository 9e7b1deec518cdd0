#[derive(Default)]
pub struct DemoService;

trait Greet {
    fn greet(&self) -> String;
}

#[metabridge::service(name = "demo")]
impl Greet for DemoService {
    fn greet(&self) -> String {
        String::new()
    }
}

fn main() {}
