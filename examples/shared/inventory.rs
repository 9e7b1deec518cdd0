//! A stateful service shared by two programs: `inventory_daemon` serves it,
//! `inventory_client` calls it. Both include this file, so the typed client
//! the macro generates (`InventoryClient`) matches the service exactly.
//!
//! It shows state behind a `Mutex` (instances are shared by every client
//! with the same constructor arguments, and called from several worker
//! threads), custom serde structs as parameters and results, bytes, an
//! error type of its own, and an async endpoint.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// An item in stock, as clients send and receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub sku: String,
    pub name: String,
    pub quantity: u32,
    pub unit_price_cents: u64,
}

/// What `take` refuses with. It is `Serialize` and `Deserialize`, so the
/// typed client gets it back as this type (`Failure::Endpoint`), variants
/// and fields intact; Python and the original protocol see its type name
/// (`OutOfStock`) and its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutOfStock {
    /// Fewer in stock than asked for.
    Short { sku: String, has: u32, wanted: u32 },
    /// Not stocked at all.
    Unknown { sku: String },
}

impl std::fmt::Display for OutOfStock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutOfStock::Short { sku, has, wanted } => {
                write!(f, "{has} of {sku} in stock, not {wanted}")
            }
            OutOfStock::Unknown { sku } => write!(f, "no {sku} in stock"),
        }
    }
}

/// One warehouse's stock. Clients pick the warehouse with the
/// constructor argument; each warehouse is one instance.
pub struct Inventory {
    warehouse: String,
    items: Mutex<BTreeMap<String, Item>>,
    labels: Mutex<BTreeMap<String, Vec<u8>>>,
}

#[metabridge::service(name = "inventory")]
impl Inventory {
    pub fn new(warehouse: String) -> Self {
        Inventory {
            warehouse,
            items: Mutex::new(BTreeMap::new()),
            labels: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds stock (or a new item); returns the item as it is now.
    #[metabridge::function]
    pub fn add(&self, item: Item) -> Item {
        let mut items = self.items.lock().unwrap();
        let entry = items.entry(item.sku.clone()).or_insert(Item {
            quantity: 0,
            ..item.clone()
        });
        entry.quantity += item.quantity;
        entry.clone()
    }

    /// Takes `quantity` of `sku`, or refuses.
    #[metabridge::function]
    pub fn take(&self, sku: String, quantity: u32) -> Result<Item, OutOfStock> {
        let mut items = self.items.lock().unwrap();
        match items.get_mut(&sku) {
            Some(item) if item.quantity >= quantity => {
                item.quantity -= quantity;
                Ok(item.clone())
            }
            Some(item) => Err(OutOfStock::Short {
                has: item.quantity,
                wanted: quantity,
                sku,
            }),
            None => Err(OutOfStock::Unknown { sku }),
        }
    }

    /// Everything in stock, by SKU.
    #[metabridge::function]
    pub fn list(&self) -> Vec<Item> {
        self.items.lock().unwrap().values().cloned().collect()
    }

    /// Stores a label image (raw bytes) for a SKU; returns its size.
    #[metabridge::function]
    pub fn set_label(&self, sku: String, png: Vec<u8>) -> usize {
        let len = png.len();
        self.labels.lock().unwrap().insert(sku, png);
        len
    }

    /// The label image of a SKU (empty if none).
    #[metabridge::function]
    pub fn label(&self, sku: String) -> Vec<u8> {
        self.labels
            .lock()
            .unwrap()
            .get(&sku)
            .cloned()
            .unwrap_or_default()
    }

    /// The stock's value, computed off the worker threads.
    #[metabridge::function]
    pub async fn value_cents(&self) -> u64 {
        let items = self.list();
        tokio::task::yield_now().await;
        items
            .iter()
            .map(|i| i.quantity as u64 * i.unit_price_cents)
            .sum()
    }
}
