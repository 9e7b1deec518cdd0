#[metabridge::service(name = "demo")]
pub struct DemoService {
    value: u32,
}

#[metabridge::service(name = "demo")]
fn free_function() {}

fn main() {}
