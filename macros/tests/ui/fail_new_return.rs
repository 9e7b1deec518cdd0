pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    pub fn new(size: u32) -> u32 {
        size
    }
}

pub struct Other;

#[metabridge::service(name = "other")]
impl Other {
    pub fn new() {}
}

fn main() {}
