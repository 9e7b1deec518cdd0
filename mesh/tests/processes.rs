//! Replicas in processes of their own: one SIGKILLed leaves a client's
//! view as soon as its TCP link closes; one SIGSTOPped (hung) leaves it
//! once its lease runs out.

use metabridge_mesh::{MeshConfig, Replicas};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::free_endpoint;

mod support;

const DEADLINE: Duration = Duration::from_secs(20);

/// A member process, killed when dropped (even if the test fails).
struct MemberProcess {
    child: Child,
    instance: String,
}

impl MemberProcess {
    fn start(service: &str, listen: &str, connect: &str, lease_ms: u64) -> MemberProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mb-mesh-member"))
            .args([service, listen, connect, &lease_ms.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let instance = line.trim().to_string();
        assert!(!instance.is_empty(), "the member did not join");
        MemberProcess { child, instance }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} failed");
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_hung_replicas_leave_the_view() {
    let seed = free_endpoint();
    let view = Replicas::watch(
        &MeshConfig {
            listen: vec![seed.clone()],
            lease: Duration::from_secs(1),
            ..MeshConfig::default()
        },
        "inventory",
    )
    .await
    .unwrap();
    let killed = MemberProcess::start("inventory", "tcp/127.0.0.1:0", &seed, 1000);
    let hung = MemberProcess::start("inventory", "tcp/127.0.0.1:0", &seed, 1000);
    assert!(
        view.wait_until(DEADLINE, |r| r.len() == 2).await,
        "both replicas never appeared: {:?}",
        view.replicas()
    );

    killed.signal("-KILL");
    let gone = killed.instance.clone();
    assert!(
        view.wait_until(DEADLINE, |r| r.len() == 1 && r[0].instance != gone)
            .await,
        "the killed replica stayed: {:?}",
        view.replicas()
    );

    hung.signal("-STOP");
    assert!(
        view.wait_until(DEADLINE, |r| r.is_empty()).await,
        "the hung replica stayed past its lease: {:?}",
        view.replicas()
    );
    hung.signal("-CONT");
    drop((killed, hung));
    view.close().await.unwrap();
}
