#[derive(Default)]
pub struct NoKey;

#[metabridge::service(name = "no-key", tls(cert = "cert.pem"))]
impl NoKey {}

#[derive(Default)]
pub struct Misspelt;

#[metabridge::service(name = "misspelt", tls(cert = "cert.pem", kye = "key.pem"))]
impl Misspelt {}

fn main() {}
