//! No `fn new` and no `Default`: the error says to add one or the other.
pub struct Counter {
    value: u64,
}

#[metabridge::service(name = "counter")]
impl Counter {
    #[metabridge::function]
    pub fn get(&self) -> u64 {
        self.value
    }
}

fn main() {}
