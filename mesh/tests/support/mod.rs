//! What the mesh tests share.

/// A free loopback TCP endpoint for a zenoh listener (zenoh takes a
/// concrete endpoint to be a seed; the port is released just before zenoh
/// binds it).
#[allow(dead_code)]
pub fn free_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("tcp/127.0.0.1:{}", listener.local_addr().unwrap().port())
}

#[allow(dead_code)]
pub mod lan;
