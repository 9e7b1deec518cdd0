//! ipc-channel (Servo): an `IpcOneShotServer` bootstraps the two
//! processes, then each call is a `String` on one `IpcSender`/`IpcReceiver`
//! pair and the reply a `String` on another.

use crate::common::{answer, measure, progress, Measurement, Peer, Settings, REQUEST};
use ipc_channel::ipc::{self, IpcOneShotServer, IpcSender};
use std::time::Duration;

/// What the peer sends through the one-shot server: where requests go, and
/// where to send it the sender for replies.
type Bootstrap = (IpcSender<String>, IpcSender<IpcSender<String>>);

pub fn peer(name: &str) -> Result<(), String> {
    let boot: IpcSender<Bootstrap> =
        IpcSender::connect(name.to_string()).map_err(|e| format!("connect: {e}"))?;
    let (request_tx, request_rx) = ipc::channel::<String>().map_err(|e| e.to_string())?;
    let (slot_tx, slot_rx) = ipc::channel::<IpcSender<String>>().map_err(|e| e.to_string())?;
    boot.send((request_tx, slot_tx))
        .map_err(|e| format!("bootstrap: {e:?}"))?;
    let reply_tx = slot_rx.recv().map_err(|e| format!("reply sender: {e:?}"))?;
    // Until the client drops its sender.
    while let Ok(request) = request_rx.recv() {
        if reply_tx.send(answer(&request)).is_err() {
            break;
        }
    }
    Ok(())
}

pub fn bench(s: &Settings) -> Result<Measurement, String> {
    progress(s, "ipc-channel");
    let (server, name) =
        IpcOneShotServer::<Bootstrap>::new().map_err(|e| format!("one-shot server: {e}"))?;
    let peer = Peer::spawn("ipc-channel", &name)?;
    // accept() has no timeout: wait for it on a thread, so a peer that
    // dies before connecting is an error here, not a hang.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(server.accept().map(|(_, boot)| boot));
    });
    let (request_tx, slot_tx) = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the peer did not connect within 10 s".to_string())?
        .map_err(|e| format!("accept: {e:?}"))?;
    let (reply_tx, reply_rx) = ipc::channel::<String>().map_err(|e| e.to_string())?;
    slot_tx
        .send(reply_tx)
        .map_err(|e| format!("sending the reply sender: {e:?}"))?;
    s.placement.apply(peer.pid());
    let m = measure("ipc-channel", s, || {
        request_tx.send(REQUEST.to_string()).expect("send");
        reply_rx.recv().expect("receive")
    });
    drop(request_tx);
    peer.finish();
    Ok(m)
}
