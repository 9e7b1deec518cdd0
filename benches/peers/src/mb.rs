//! MetaBridge itself: the demo service (examples/service_daemon.rs) in its
//! own daemon process, started with `Service::run()`, called through the
//! generated typed client over shared memory and, separately, over TCP.

use crate::common::{measure, progress, Measurement, Settings, GREETING, REQUEST};
use crate::service_daemon::{Service, ServiceClient};

pub fn bench(s: &Settings) -> Result<(Measurement, Measurement), String> {
    progress(s, "MetaBridge daemon: Service::run()");
    let daemon = Service::run().map_err(|e| format!("Service::run: {e}"))?;
    let mut results = Vec::new();
    for (system, kind) in [
        ("metabridge-shm", metabridge::TransportKind::Shm),
        ("metabridge-tcp", metabridge::TransportKind::Tcp),
    ] {
        progress(s, system);
        let client = metabridge::connect("demo-service")
            .kwarg("argumento", GREETING)
            .transport(kind)
            .open()
            .map(ServiceClient::from_client)
            .map_err(|e| format!("{system}: connect: {e}"))?;
        // The first call opens the channel (and may start client threads);
        // pin after it.
        client.get(REQUEST).map_err(|e| format!("{system}: {e}"))?;
        s.placement.apply(daemon.pid());
        results.push(measure(system, s, || client.get(REQUEST).expect("get")));
        client.close();
    }
    daemon
        .stop()
        .map_err(|e| format!("stopping the daemon: {e}"))?;
    let tcp = results.pop().expect("two runs");
    let shm = results.pop().expect("two runs");
    Ok((shm, tcp))
}
