//! `metabridge call`: one call, its result printed as one line of JSON
//! (or raw bytes with `--raw`).

use crate::connect::{call_args, open_client};
use crate::fail::Fail;
use crate::flags::CallSpec;
use crate::json;
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    call: CallSpec,
    /// Write a bytes result as raw bytes instead of JSON
    /// (`{"$bytes": "<base64>"}`).
    #[arg(long)]
    raw: bool,
    /// Find the service by name across a mesh (seed endpoints, or a zenoh
    /// configuration file; default `$METABRIDGE_MESH`): the call goes
    /// through the `metabridge-mesh relay` helper, which brings zenoh.
    #[arg(long, value_name = "SETTING", num_args = 0..=1, default_missing_value = "")]
    mesh: Option<String>,
}

/// Makes the call and prints its result.
pub fn run(
    Args {
        call: spec,
        raw,
        mesh,
    }: Args,
) -> Result<(), Fail> {
    let (call, ctor) = call_args(spec.args.as_deref(), &spec.target)?;
    let result: rmpv::Value = match mesh {
        Some(setting) => {
            if spec.target.at.is_some() {
                return Err(Fail(2, "--mesh and --at exclude each other".into()));
            }
            let mut setup = relay_setup(&spec, setting)?;
            if let Some(ctor) = ctor {
                setup.ctor_args = ctor.encoded_args();
                setup.ctor_kwargs = ctor.encoded_kwargs();
            }
            let relay = metabridge::MeshRelay::new(setup);
            relay.call_with(&spec.endpoint, &call)?
        }
        None => {
            let client = open_client(&spec.service, &spec.target)?;
            let result = client.call_with(&spec.endpoint, &call)?;
            client.close();
            result
        }
    };
    let mut out = std::io::stdout().lock();
    match (&result, raw) {
        (rmpv::Value::Binary(b), true) => {
            let _ = out.write_all(b);
        }
        _ => {
            let _ = writeln!(out, "{}", json::to_json(&result));
        }
    }
    Ok(())
}

/// What the relay needs: the mesh (the flag's, else `$METABRIDGE_MESH`),
/// the timeout, the token and TLS flags.
fn relay_setup(
    spec: &crate::flags::CallSpec,
    setting: String,
) -> Result<metabridge::RelaySetup, Fail> {
    let setting = match setting {
        s if !s.is_empty() => s,
        _ => std::env::var("METABRIDGE_MESH")
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Fail(2, "--mesh needs a setting, or METABRIDGE_MESH".into()))?,
    };
    let t = &spec.target;
    #[allow(unused_mut)]
    let mut setup = metabridge::RelaySetup {
        service: spec.service.clone(),
        setting,
        timeout_ms: t.timeout.as_millis().try_into().unwrap_or(u64::MAX),
        token: t.token.clone(),
        ..Default::default()
    };
    #[cfg(feature = "tls")]
    {
        let path = |p: &std::path::PathBuf| p.to_string_lossy().into_owned();
        setup.tls_ca = t.tls_ca.as_ref().map(path);
        setup.tls_pin = t.tls_pin.clone();
        setup.tls_cert = t
            .tls_cert
            .as_ref()
            .zip(t.tls_key.as_ref())
            .map(|(c, k)| (path(c), path(k)));
    }
    Ok(setup)
}
