//! A fixture for the tests of values and errors (`tests/values.rs`):
//! instances shared by constructor value, bytes as MessagePack bin, a
//! constructor that panics on request, and the typed client's `connect`.
//!
//! `values_service serve <name>` serves in the foreground until SIGTERM
//! (`VALUES_CACHE=n` sets the instance cache's capacity);
//! `values_service connect <prefix> <fail>` connects with the generated
//! typed client to the service named "values" and prints what happened.

use std::sync::atomic::{AtomicU64, Ordering};

static INSTANCES: AtomicU64 = AtomicU64::new(0);
static FAILED_CONSTRUCTIONS: AtomicU64 = AtomicU64::new(0);

pub struct Values {
    id: u64,
    prefix: String,
    calls: AtomicU64,
}

#[metabridge::service(name = "values")]
impl Values {
    pub fn new(prefix: String, fail: bool) -> Self {
        if fail {
            FAILED_CONSTRUCTIONS.fetch_add(1, Ordering::SeqCst);
            panic!("constructor refused on purpose ({prefix})");
        }
        Values {
            id: INSTANCES.fetch_add(1, Ordering::SeqCst),
            prefix,
            calls: AtomicU64::new(0),
        }
    }

    /// Counts the calls this instance served: state that only one instance
    /// per constructor value keeps together.
    #[metabridge::function]
    pub fn bump(&self) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst) + 1
    }

    #[metabridge::function]
    pub fn instance_id(&self) -> u64 {
        self.id
    }

    #[metabridge::function]
    pub fn prefix(&self) -> String {
        self.prefix.clone()
    }

    /// How many times a constructor panicked in this process.
    #[metabridge::function]
    pub fn failed_constructions(&self) -> u64 {
        FAILED_CONSTRUCTIONS.load(Ordering::SeqCst)
    }

    #[metabridge::function]
    pub fn blob_len(&self, data: Vec<u8>) -> usize {
        data.len()
    }

    #[metabridge::function]
    pub fn blob_echo(&self, data: Vec<u8>) -> Vec<u8> {
        data
    }

    #[metabridge::function]
    pub fn blob_make(&self, len: usize, byte: u8) -> Vec<u8> {
        vec![byte; len]
    }

    #[metabridge::function]
    pub fn blob_sum(&self, data: bytes::Bytes) -> u64 {
        data.iter().map(|&b| b as u64).sum()
    }

    #[metabridge::function]
    pub async fn blob_reverse(&self, data: Box<[u8]>) -> Result<bytes::Bytes, std::fmt::Error> {
        let mut v = data.into_vec();
        v.reverse();
        Ok(v.into())
    }

    #[metabridge::function]
    pub fn add(&self, first: i64, second: i64) -> i64 {
        first + second
    }

    #[metabridge::function]
    pub fn count(&self, words: Vec<String>) -> usize {
        words.len()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let name = args.get(2).cloned().unwrap_or_else(|| "values".into());
            let cache: usize = std::env::var("VALUES_CACHE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(128);
            let service = Values::service()
                .rename(&name)
                .configure(|c| c.cache_capacity = cache);
            if let Err(e) = metabridge::serve(service) {
                eprintln!("values_service: {e}");
                std::process::exit(1);
            }
        }
        Some("connect") => {
            let fail = args.get(3).is_some_and(|a| a == "true");
            match ValuesClient::connect(&args[2], fail) {
                Ok(client) => {
                    println!("connected: bump {}", client.bump().unwrap());
                    let data = client.blob_echo(vec![1, 2, 3]).unwrap();
                    let reversed = client.blob_reverse(data.into()).unwrap();
                    println!(
                        "bytes: {:?} sum {}",
                        &reversed[..],
                        client.blob_sum(reversed.clone()).unwrap()
                    );
                }
                Err(e) => println!("connect failed: {e}"),
            }
        }
        _ => {
            eprintln!("usage: values_service serve <name> | connect <prefix> <fail>");
            std::process::exit(64);
        }
    }
}
