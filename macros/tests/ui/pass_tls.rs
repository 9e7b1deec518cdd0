//! `tls(..)` names the PEM files the service serves TLS with.

#[derive(Default)]
pub struct Api;

#[metabridge::service(
    name = "api",
    host = "0.0.0.0",
    tls(cert = "/etc/api/cert.pem", key = "/etc/api/key.pem", client_ca = "/etc/api/clients.pem")
)]
impl Api {
    #[metabridge::function]
    pub fn ping(&self) {}
}

fn main() {
    let _ = Api::service().configure(|c| {
        let tls = c.tls.as_ref().expect("tls set");
        assert_eq!(tls.cert, std::path::Path::new("/etc/api/cert.pem"));
        assert_eq!(tls.key, std::path::Path::new("/etc/api/key.pem"));
        assert_eq!(tls.client_ca.as_deref(), Some(std::path::Path::new("/etc/api/clients.pem")));
    });
}
