#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    #[metabridge::function]
    pub fn get(&self) -> u32 {
        1
    }

    // "get" is taken by the method above.
    #[metabridge::endpoint("get")]
    pub fn fetch(&self) -> u32 {
        2
    }

    #[metabridge::endpoint("teste")]
    pub fn home(&self) -> u32 {
        3
    }

    // "home" is taken by the alias of the endpoint above.
    #[metabridge::endpoint("home")]
    pub fn house(&self) -> u32 {
        4
    }
}

fn main() {}
