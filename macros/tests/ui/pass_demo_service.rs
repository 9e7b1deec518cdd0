//! The full demo service: constructor, renamed endpoint, sync/async endpoints,
//! `Result` returns, unit returns, and the generated client.
#![deny(warnings, missing_docs)]

use std::sync::Mutex;

/// The demo.
pub struct DemoService {
    argumento: String,
    hits: Mutex<u64>,
}

#[metabridge::service(name = "demo-service")]
impl DemoService {
    /// The constructor.
    pub fn new(argumento: String) -> Self {
        DemoService { argumento, hits: Mutex::new(0) }
    }

    /// Exposed as "teste" and as "home".
    #[metabridge::endpoint("teste")]
    pub fn home(&self) -> String {
        self.argumento.clone()
    }

    /// The `get` endpoint.
    #[metabridge::function]
    pub fn get(&self, outro_argumento: String) -> String {
        format!("{} {outro_argumento}", self.argumento)
    }

    /// The `soma` endpoint.
    #[metabridge::function]
    pub async fn soma(&self, a: i64, b: i64) -> String {
        (a + b).to_string()
    }

    /// The `parse` endpoint.
    #[metabridge::function]
    pub fn parse(&self, s: String) -> Result<i64, std::num::ParseIntError> {
        s.parse()
    }

    /// The `parse_async_side` endpoint.
    #[metabridge::function]
    pub async fn parse_async_side(&self, s: String) -> Result<i64, std::num::ParseIntError> {
        s.parse()
    }

    /// The `hit` endpoint.
    #[metabridge::function]
    pub fn hit(&self) {
        *self.hits.lock().unwrap() += 1;
    }

    /// The `hit_later` endpoint.
    #[metabridge::function]
    pub async fn hit_later(&self) {
        self.hit();
    }

    /// The `name` endpoint.
    #[metabridge::function]
    pub fn name(&self) -> &str {
        &self.argumento
    }

    /// The `bytes` endpoint.
    #[metabridge::function]
    pub fn bytes(&self, data: Vec<u8>, n: Option<u32>, flag: bool) -> Vec<u8> {
        let _ = (n, flag);
        data
    }

    /// Only reachable by a name that is not an identifier, and as `dashed`.
    #[metabridge::endpoint("with-dash")]
    pub fn dashed(&self) -> u64 {
        *self.hits.lock().unwrap()
    }

    fn helper(&self) {}
}

fn uses_the_client(c: &DemoServiceClient) -> metabridge::Result<()> {
    let _: String = c.teste()?;
    let _: String = c.home()?;
    let _: String = c.get("x")?;
    let _: String = c.soma(1, 2)?;
    let _: i64 = c.parse("3")?;
    let _: i64 = c.parse_async_side("3")?;
    c.hit()?;
    c.hit_later()?;
    let _: String = c.name()?;
    let _: Vec<u8> = c.bytes(&[1], Some(2), true)?;
    let _: u64 = c.dashed()?;
    let _: &metabridge::Client = c.client();
    c.clone().close();
    Ok(())
}

async fn uses_the_async_client(c: &DemoServiceClient) -> metabridge::Result<()> {
    let _: String = c.teste_async().await?;
    let _: String = c.get_async("x").await?;
    let _: String = c.soma_async(1, 2).await?;
    let _: i64 = c.parse_async("3").await?;
    c.hit_async().await?;
    let _: Vec<u8> = c.bytes_async(&[1], None, false).await?;
    Ok(())
}

fn main() {
    let service: metabridge::Service<DemoService> = DemoService::service();
    assert_eq!(service.name(), "demo-service");
    let _ = DemoService::run;
    let _ = DemoService::serve;
    let _ = DemoServiceClient::connect;
    let _ = uses_the_client;
    let _ = uses_the_async_client;
    DemoService::new(String::new()).helper();
}
