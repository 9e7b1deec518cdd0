#[derive(Default)]
pub struct DemoService {
    count: u64,
}

#[metabridge::service(name = "demo")]
impl DemoService {
    #[metabridge::function]
    pub fn consume(self) -> u64 {
        self.count
    }

    #[metabridge::function]
    pub fn increment(&mut self) {
        self.count += 1;
    }

    #[metabridge::function]
    pub fn no_receiver(n: u64) -> u64 {
        n
    }
}

fn main() {}
