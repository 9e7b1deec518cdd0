#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    #[metabridge::function]
    pub fn show(&self, value: impl std::fmt::Display) -> String {
        value.to_string()
    }

    #[metabridge::function]
    pub fn pair(&self, (a, b): (u32, u32)) -> u32 {
        a + b
    }

    #[metabridge::function]
    pub fn ignored(&self, _: u32) {}

    #[metabridge::function]
    pub fn borrowed(&self, name: &str) -> usize {
        name.len()
    }
}

fn main() {}
