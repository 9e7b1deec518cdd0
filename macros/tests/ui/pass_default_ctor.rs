//! No `new`: the service is built with `Default`; short attribute forms; host and port.
use metabridge::{endpoint, function, service};

#[derive(Default)]
struct Counter {
    value: std::sync::atomic::AtomicU64,
}

#[service(name = "counter", host = "0.0.0.0", port = 9000)]
impl Counter {
    #[function]
    fn add(&self, n: u64) -> u64 {
        self.value.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n
    }

    #[endpoint("current")]
    fn get(&self) -> u64 {
        self.value.load(std::sync::atomic::Ordering::Relaxed)
    }

    // A parameter named like the macro's internals is fine (hygiene).
    #[function]
    fn tricky(&self, __s: u8, __args: u8, __out: u8) -> u8 {
        __s + __args + __out
    }
}

fn main() {
    let service = Counter::service();
    assert_eq!(
        service.endpoint_names(),
        vec!["add".to_string(), "current".to_string(), "get".to_string(), "tricky".to_string()]
    );
    let _ = CounterClient::connect;
    let _ = CounterClient::current;
    let _ = CounterClient::get_async;
}
