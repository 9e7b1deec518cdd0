#[derive(Default)]
pub struct DemoService;

#[metabridge::service(name = "demo")]
impl DemoService {
    #[metabridge::endpoint]
    pub fn no_name(&self) {}

    #[metabridge::endpoint(teste)]
    pub fn ident_name(&self) {}

    #[metabridge::endpoint(42)]
    pub fn number_name(&self) {}

    #[metabridge::function("other")]
    pub fn function_with_args(&self) {}
}

fn main() {}
