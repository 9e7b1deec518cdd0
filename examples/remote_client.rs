//! Calls a service on another host by its TCP address.
//!
//! `cargo run --example remote_client -- 192.168.0.10:40123 [token]`

fn main() -> metabridge::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(address) = args.next() else {
        eprintln!("usage: remote_client HOST:PORT [TOKEN]");
        std::process::exit(64);
    };
    let mut connect = metabridge::connect("public-service").at(&address);
    if let Some(token) = args.next() {
        connect = connect.token(&token);
    }
    let client = connect.open()?;
    println!("endpoints: {:?}", client.endpoints()?);
    println!("status: {}", client.call::<String>("status", ())?);
    Ok(())
}
