//! The user's type may be called `Service` (the seed's demo does): the generated
//! code names the core's types by absolute paths.
use std::time::Duration;

pub struct Service {
    argumento: String,
}

#[metabridge::service(name = "demo-service")]
impl Service {
    pub fn new(argumento: String) -> Self {
        Service { argumento }
    }

    #[metabridge::endpoint("teste")]
    pub fn home(&self) -> String {
        "home".to_string()
    }

    #[metabridge::function]
    pub fn get(&self, outro_argumento: String) -> String {
        format!("{} {}", self.argumento, outro_argumento)
    }

    #[metabridge::function]
    pub async fn soma(&self, a: i64, b: i64) -> String {
        let _ = Duration::from_millis(1);
        format!("{}", a + b)
    }
}

// Local types that shadow names the expansion uses.
#[allow(dead_code)]
struct Args;
#[allow(dead_code)]
struct Reply;
#[allow(dead_code)]
type Result<T> = std::result::Result<T, ()>;
#[allow(dead_code)]
struct Client;

fn main() {
    let service: metabridge::Service<Service> = Service::service();
    assert_eq!(
        service.endpoint_names(),
        vec!["get".to_string(), "home".to_string(), "soma".to_string(), "teste".to_string()]
    );
    let _ = ServiceClient::connect;
    let _ = ServiceClient::teste;
}
