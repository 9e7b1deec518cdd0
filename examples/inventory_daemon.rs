//! Serves the `inventory` service (examples/shared/inventory.rs) in this
//! process until SIGTERM or Ctrl+C: the shape of a daemon binary that a
//! supervisor (systemd, a container) runs.
//!
//! ```text
//! cargo run --example inventory_daemon &     # serves until stopped
//! cargo run --example inventory_client       # in another terminal
//! ```

#[path = "shared/inventory.rs"]
#[allow(dead_code)]
mod inventory;

fn main() {
    if let Err(e) = metabridge::serve(inventory::Inventory::service()) {
        eprintln!("inventory_daemon: {e}");
        std::process::exit(1);
    }
}
