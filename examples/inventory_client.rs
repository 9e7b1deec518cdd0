//! Calls the `inventory` service (examples/shared/inventory.rs) served by
//! another program, `inventory_daemon`, through its typed client: custom
//! structs in and out, bytes, a typed error, an async endpoint.
//!
//! With no daemon running, it starts one itself (and stops it at the end),
//! so `cargo run --example inventory_client` works on its own too.

#[path = "shared/inventory.rs"]
#[allow(dead_code)]
mod inventory;

use inventory::{Inventory, InventoryClient, Item, OutOfStock};

fn main() -> metabridge::Result<()> {
    let own_daemon = match metabridge::lookup("inventory") {
        Ok(entry) => {
            println!("using the running service (pid {})", entry.pid);
            None
        }
        Err(_) => Some(Inventory::run()?),
    };
    let lisbon = InventoryClient::connect("lisboa")?;
    let bolt = Item {
        sku: "B-8".into(),
        name: "bolt, 8 mm".into(),
        quantity: 500,
        unit_price_cents: 12,
    };
    println!("added: {:?}", lisbon.add(bolt)?);
    println!("took: {:?}", lisbon.take("B-8", 120)?);
    // The endpoint's own error comes back as its type: match its variants.
    match lisbon.take("B-8", 10_000) {
        Err(metabridge::Failure::Endpoint(OutOfStock::Short { has, wanted, .. })) => {
            println!("refused: {has} in stock, {wanted} wanted")
        }
        other => println!("unexpected: {other:?}"),
    }
    let label = vec![0x89, b'P', b'N', b'G', 0, 1, 2, 3];
    println!("label stored: {} bytes", lisbon.set_label("B-8", &label)?);
    assert_eq!(lisbon.label("B-8")?, label);
    println!("stock value: {} cents", lisbon.value_cents()?);
    // Another warehouse is another instance, with its own state.
    let porto = InventoryClient::connect("porto")?;
    println!("porto has {} items", porto.list()?.len());
    lisbon.close();
    porto.close();
    if let Some(daemon) = own_daemon {
        daemon.stop()?;
    }
    Ok(())
}
