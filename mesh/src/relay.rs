//! `metabridge-mesh relay`: the mesh client of a program that does not
//! link zenoh (the runtime's [`metabridge::MeshRelay`] starts it and speaks
//! to it over its standard input and output).
//!
//! It reads a [`RelaySetup`], opens a [`MeshClient`](crate::MeshClient)
//! for it (TLS and the token from its environment, which the runtime
//! sets), then makes each [`RelayCall`] on a thread of its own and writes
//! its [`RelayAnswer`]. A client that cannot be opened answers every call
//! with that error. End-of-file on its input ends it.

use crate::{ConnectMesh, MeshClient, MeshConfig};
use metabridge::rmpv::Value;
use metabridge::{
    read_relay_frame, write_relay_frame, RelayAnswer, RelayCall, RelayError, RelaySetup,
};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Serves the relay protocol on `input` and `output` until `input` ends.
pub fn run(mut input: impl Read, output: impl Write + Send + 'static) -> Result<(), String> {
    let setup: RelaySetup = read_relay_frame(&mut input)
        .map_err(|e| format!("the relay's setup: {e}"))?
        .ok_or("the relay's input ended before its setup")?;
    let client = open(&setup).map(Arc::new).map_err(|e| RelayError::of(&e));
    let output = Arc::new(Mutex::new(output));
    loop {
        let call: RelayCall = match read_relay_frame(&mut input) {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("a call the relay cannot read: {e}")),
        };
        let (client, output) = (client.clone(), output.clone());
        let spawned = std::thread::Builder::new()
            .name("metabridge-mesh-relay-call".into())
            .spawn(move || {
                let outcome = match &client {
                    Ok(c) => call_one(c, &call),
                    Err(e) => Err(e.clone()),
                };
                let answer = RelayAnswer {
                    id: call.id,
                    outcome,
                };
                let mut out = output.lock().unwrap_or_else(|p| p.into_inner());
                // The runtime reads every answer until it closes our input;
                // one it no longer reads ends this process with its input.
                let _ = write_relay_frame(&mut *out, &answer);
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start a call's thread: {e}"));
        }
    }
}

fn open(setup: &RelaySetup) -> metabridge::Result<MeshClient> {
    let config =
        MeshConfig::from_setting(&setup.setting).map_err(|e| metabridge::Error::Announce {
            service: setup.service.clone(),
            why: e.to_string(),
        })?;
    let mut connect =
        metabridge::connect(&setup.service).timeout(Duration::from_millis(setup.timeout_ms.max(1)));
    let bad = |what: &str| metabridge::Error::Relay {
        service: setup.service.clone(),
        why: format!(
            "the constructor's {what} are not a MessagePack {}",
            if what == "arguments" {
                "array"
            } else {
                "map with string keys"
            }
        ),
    };
    if !setup.ctor_args.is_empty() {
        match metabridge::rmpv::decode::read_value(&mut &setup.ctor_args[..]) {
            Ok(Value::Array(items)) => {
                for v in items {
                    connect = connect.arg(v);
                }
            }
            _ => return Err(bad("arguments")),
        }
    }
    if !setup.ctor_kwargs.is_empty() {
        match metabridge::rmpv::decode::read_value(&mut &setup.ctor_kwargs[..]) {
            Ok(Value::Map(pairs)) => {
                for (k, v) in pairs {
                    let Some(k) = k.as_str() else {
                        return Err(bad("keyword arguments"));
                    };
                    connect = connect.kwarg(k, v);
                }
            }
            _ => return Err(bad("keyword arguments")),
        }
    }
    connect.mesh(config).open()
}

fn call_one(client: &MeshClient, call: &RelayCall) -> Result<serde_bytes::ByteBuf, RelayError> {
    let value: metabridge::rmpv::Value = client
        .call_raw(&call.endpoint, &call.args, &call.kwargs)
        .map_err(|e| RelayError::of(&e))?;
    let mut bytes = Vec::new();
    metabridge::rmpv::encode::write_value(&mut bytes, &value).map_err(|e| RelayError {
        kind: "Other".into(),
        detail: String::new(),
        message: format!("the result cannot be encoded again: {e}"),
    })?;
    Ok(serde_bytes::ByteBuf::from(bytes))
}
